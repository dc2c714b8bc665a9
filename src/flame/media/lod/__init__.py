"""Adaptive data transmission of 3D models (seed MC-11): the LOD SF.

A tenant uploads glTF 2.0 binaries (or ships them with the image); the SF simplifies each
into a ladder of levels of detail, measures them, and serves each client the level its HTTP
Client Hints call for, like an ABR player choosing a rendition. docs/media-lod.md.
"""
