"""The content SF (issue 16): ingest, storage, metadata and quality analysis of a tenant's media.

    python -m flame.media.content        # the SF (FastAPI on uvicorn), configured by MEDIA_* env

    storage    where finished assets live: the filesystem (default) or S3 (boto3)
    db         SQLite (default) or PostgreSQL behind one small interface
    catalog    the metadata database (MC-1/12): assets, descriptions, JSON Schemas, search
    tus        resumable uploads, tus 1.0.0 (core, creation, creation-with-upload, termination,
               checksum, expiration)
    analysis   media quality analysis (MC-2): probe (PyAV), no-reference filters, VMAF/PSNR/SSIM
    rules      the provider's acceptance rule
    jobs       the analysis worker and its persisted job queue
    reporter   line protocol to the CLMC
    auth       who may call the SF: tenant API keys or platform tokens checked with /v1/whoami
    app        the HTTP API and the CMS page

docs/media.md describes the API, the measurements and what is not done.
"""
