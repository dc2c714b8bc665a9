"""The provider's acceptance rule: what an asset must be to be accepted after analysis.

A rule is a JSON object, every key optional, checked by `RULE_SCHEMA` (unknown keys are
refused, so a typo never silently disables a check). `evaluate` returns the reasons an asset
fails it, each naming the rule key, e.g. ``height 360 is below min_height 720``. A check whose
measurement is missing (no audio stream for ``audio_codecs``, no reference for ``min_vmaf``)
fails only with ``require_reference`` / ``require_audio``; otherwise it is listed as not
checked.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from flame.media.content.catalog import schema_errors
from flame.media.content.errors import BadRequest

__all__ = ["RULE_SCHEMA", "check_rule", "evaluate"]

_NUM = {"type": "number", "minimum": 0}
_INT = {"type": "integer", "minimum": 0}
_RATIO = {"type": "number", "minimum": 0, "maximum": 1}
_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}

RULE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "acceptance rule",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_width": _INT,
        "min_height": _INT,
        "max_height": _INT,
        "min_fps": _NUM,
        "min_duration_s": _NUM,
        "max_duration_s": _NUM,
        "min_bitrate_kbps": _NUM,
        "video_codecs": _NAMES,
        "audio_codecs": _NAMES,
        "require_audio": {"type": "boolean"},
        "min_vmaf": {"type": "number", "minimum": 0, "maximum": 100},
        "min_psnr": _NUM,
        "min_ssim": _RATIO,
        "require_reference": {"type": "boolean"},
        "max_black_ratio": _RATIO,
        "max_freeze_ratio": _RATIO,
        "max_blockiness": _NUM,
        "max_blur": _NUM,
    },
}
_VALIDATOR = Draft202012Validator(RULE_SCHEMA)


def check_rule(doc: Any) -> dict[str, Any]:
    errors = schema_errors(_VALIDATOR, doc)
    if errors:
        first = errors[0]
        raise BadRequest(
            f"acceptance rule invalid at {first['path']}: {first['message']}",
            code="invalid_rule",
            errors=errors,
        )
    assert isinstance(doc, dict)
    return doc


def _get(doc: dict[str, Any], *path: str) -> Any:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


def evaluate(
    rule: dict[str, Any], technical: dict[str, Any], quality: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(reasons the asset fails the rule, checks that could not be made)."""
    fails: list[str] = []
    unchecked: list[str] = []
    video = technical.get("video") or {}
    audio = technical.get("audio")

    def low(key: str, what: str, value: Any, unit: str = "") -> None:
        if key not in rule:
            return
        if value is None:
            unchecked.append(f"{key}: no {what} measured")
        elif value < rule[key]:
            fails.append(f"{what} {_fmt(value)}{unit} is below {key} {_fmt(rule[key])}{unit}")

    def high(key: str, what: str, value: Any, unit: str = "") -> None:
        if key not in rule:
            return
        if value is None:
            unchecked.append(f"{key}: no {what} measured")
        elif value > rule[key]:
            fails.append(f"{what} {_fmt(value)}{unit} is above {key} {_fmt(rule[key])}{unit}")

    if not video and any(k in rule for k in ("min_width", "min_height", "video_codecs")):
        fails.append("the asset has no video stream")
    low("min_width", "width", video.get("width"))
    low("min_height", "height", video.get("height"))
    high("max_height", "height", video.get("height"))
    low("min_fps", "frame rate", video.get("fps"), " fps")
    low("min_duration_s", "duration", technical.get("duration_s"), " s")
    high("max_duration_s", "duration", technical.get("duration_s"), " s")
    bitrate = technical.get("bitrate")
    low("min_bitrate_kbps", "bitrate", None if bitrate is None else bitrate / 1000, " kb/s")
    if "video_codecs" in rule and video and video.get("codec") not in rule["video_codecs"]:
        fails.append(
            f"video codec {video.get('codec')} is not one of video_codecs {rule['video_codecs']}"
        )
    if rule.get("require_audio") and not audio:
        fails.append("the asset has no audio stream (require_audio)")
    if "audio_codecs" in rule:
        if not audio:
            unchecked.append("audio_codecs: no audio stream")
        elif audio.get("codec") not in rule["audio_codecs"]:
            fails.append(
                f"audio codec {audio.get('codec')} is not one of audio_codecs {rule['audio_codecs']}"
            )
    fr = quality.get("full_reference")
    fr_keys = [k for k in ("min_vmaf", "min_psnr", "min_ssim") if k in rule]
    if fr_keys and not fr:
        note = f"{', '.join(fr_keys)}: no reference to compare with"
        if rule.get("require_reference"):
            fails.append(f"{note} (require_reference)")
        else:
            unchecked.append(note)
    elif fr:
        low("min_vmaf", "VMAF", fr.get("vmaf"))
        low("min_psnr", "PSNR", fr.get("psnr_y"), " dB")
        low("min_ssim", "SSIM", fr.get("ssim"))
    nr = quality.get("no_reference") or {}
    high("max_black_ratio", "black share", _get(nr, "black", "ratio"))
    high("max_freeze_ratio", "frozen share", _get(nr, "freeze", "ratio"))
    high("max_blockiness", "blockiness", _get(nr, "blockiness", "mean"))
    high("max_blur", "blur", _get(nr, "blur", "mean"))
    return fails, unchecked


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
