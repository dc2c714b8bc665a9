"""The live ingest SF (issue 17, item 3): contribution, live ladder and live HLS/DASH.

    python -m flame.media.live      # configured by LIVE_KEYS, MAX_FEEDS, LADDER... (config)

    config     settings from the environment: feeds and stream keys, ladder, window
    rtmp       reads the stream key an RTMP encoder publishes (chunk stream + AMF0)
    front      the RTMP port: authenticates each publisher, relays it to its ffmpeg
    pipeline   the ffmpeg command (ladder, CMAF for HLS and DASH), progress, closing a window
    sessions   one supervised ffmpeg per contribution, feeds, back-off, the SRT listener
    app        HTTP: live windows, /v1/feeds, /healthz
    service    the process: wiring, measurements to the CLMC

docs/media-live.md describes protocols, keys, the ladder, latency and what is not done.
"""
