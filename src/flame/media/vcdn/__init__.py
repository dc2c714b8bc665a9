"""The virtual CDN around the edge cache (`flame.media.cache`), MC-5/MC-10 (issue 17 item 4).

    admin      the tenant's management API on the cache: purge, ban by tag, prefetch, stats
    service    the cache SF's optional parts from its environment: admin auth, CLMC reports
    planner    the replica planner: demand from the CLMC -> prefetch of the top paths per edge

docs/media-vcdn.md describes the API, the headers honoured, the measurements and the limits.
"""
