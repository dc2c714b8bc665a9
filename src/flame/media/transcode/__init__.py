"""The transcoder SF (issue 17, MC-7/8 and MC-9): ladders in H.264, HEVC or AV1, each rung
encoded once into CMAF fragments that an HLS (fMP4) and an MPEG-DASH manifest both describe.

    python -m flame.media.transcode        # the SF (FastAPI on uvicorn), configured by env

    ladder     a job's request (source, rungs, codec) checked; the ffmpeg commands
    jobs       the bounded queue and its workers: fetch, probe, encode+package, VMAF, CLMC
    output     the outputs over HTTP (media types, ranges, caching) and the player page
    service    configuration, the SF's parts and their tasks
    app        the HTTP API

docs/media-transcoding.md describes the API, the ladder format and what is not done.
"""
