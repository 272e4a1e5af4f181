"""
SRT (Secure Reliable Transport) ingest.  Sans-IO: the packet codec
(L{tokengate.srt.packets}), the stream id forms (L{tokengate.srt.streamid}),
the listener side of the HSv5 caller-listener handshake
(L{tokengate.srt.handshake}), a receiver connection
(L{tokengate.srt.receiver}) and the listener holding them
(L{tokengate.srt.connection}); the Twisted UDP adapter is
L{tokengate.srt.protocol}.
"""
