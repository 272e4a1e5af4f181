"""
Interop tests: each drives a real client or server that nobody here wrote
(ffmpeg and ffprobe, srt-live-transmit, GStreamer, mpv, VLC, Chromium, the
Ant Media JavaScript SDK, coturn, redis-server) or a real C{twistd}
subprocess, over loopback and bounded in time. A missing binary skips its
tests, naming it (a failure when C{TOKENGATE_REQUIRE_CLIENTS=1}).

C{python -m twisted.trial tests.interop} runs only these; C{tests} runs
everything. The shared runners (L{tests.procs}, L{tests.service},
L{tests.browser}, L{tests.mediaserver}, L{tests.redisserver},
L{tests.fixtures}) stay in C{tests/}.
"""
