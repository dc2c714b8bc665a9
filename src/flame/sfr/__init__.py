"""Service Function Routing (SFR): topology at run time, path computation (PCE), the FQDN
registry and its distribution, and the service router data plane (SFR-1..20).

The data plane (`flame.sfr.router`) never imports the control plane (`pce`, `registry`,
`api`): they share only `flame.sfr.models`, as JSON over HTTP.
"""
