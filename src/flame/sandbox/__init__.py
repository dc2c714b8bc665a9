"""FLAME-in-a-box (seed section 5.1): the whole platform on one machine.

`flame up` starts every component as a real process on loopback addresses, the default
topologies live in `data/`, and `ue` is the user-equipment load generator.
"""
