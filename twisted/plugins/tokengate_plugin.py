# Only binds a ServiceMaker: twistd resolves tokengate.tap lazily, so nothing
# heavy (and no reactor) is imported when twistd scans its plugins.
from twisted.application.service import ServiceMaker

tokengate = ServiceMaker(
    "tokengate",
    "tokengate.tap",
    "Streaming server gated by one-time tokens (Ant Media compatible)",
    "tokengate",
)
