"""The line-protocol data the compatibility tests write into InfluxDB and into our store."""

from __future__ import annotations

import random

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
S = 1_000_000_000
DB = "iqlcompat"  # distinct from the databases other tests make on the shared server


def lines() -> list[str]:
    rng = random.Random(20260101)
    out: list[str] = []
    for h, host in enumerate(["h1", "h2", "h3"]):
        region = ["eu", "us", None][h]
        t = T0 + h * S + h * 1_000_000  # distinct times across hosts, with ms fractions
        for i in range(120):
            t += rng.choice([3, 5, 7, 11]) * S
            tags = f"host={host}" + (f",region={region}" if region else "")
            usage = round(rng.uniform(0, 100), 2)
            fields = [f"usage={usage}", f"cores={rng.randint(1, 16)}i"]
            if i % 4 == 0:
                fields.append(f'state="{rng.choice(["up", "down", "busy"])}"')
            if i % 5 == 0:
                fields.append(f"ok={rng.choice(['true', 'false'])}")
            out.append(f"cpu,{tags} {','.join(fields)} {t}")
        for i in range(60):
            t2 = T0 + (i * 10 + h) * S
            out.append(
                f"mem,host={host} free={rng.randint(1000, 9000)}i,used={round(rng.uniform(1, 64), 3)} {t2}"
            )
    for i in range(40):
        iface = ["eth0", "eth1"][i % 2]
        out.append(
            f"net,host=h1,iface={iface} rx={rng.randint(0, 10**6)}i,tx={rng.randint(0, 10**6)}i {T0 + i * 15 * S}"
        )
    # same timestamps in two series: ordering of ties and first()/last() tie-breaks
    out.append(f"disk,host=a,dev=sda used=5,total=10i {T0}")
    out.append(f"disk,host=b,dev=sda used=7,total=10i {T0}")
    out.append(f"disk,host=a,dev=sdb used=1,total=20i {T0 + 60 * S}")
    out.append(f"disk,host=b,dev=sdb used=9,total=20i {T0 + 60 * S}")
    # names that need quoting and escaping
    out.append(f"weird\\ m,tag\\ key=a\\,b\\=c,t2=x\\ y v=1,f\\ k=2i {T0}")
    out.append(f"weird\\ m,tag\\ key=plain v=3 {T0 + S}")
    # a key that is both a tag and a field
    out.append(f"dup,k=a k=1,v=5 {T0}")
    out.append(f"dup,k=b k=2,v=6 {T0 + S}")
    return out


def body() -> bytes:
    return ("\n".join(lines()) + "\n").encode()
