"""
WebRTC publish and play behind the gate: the Ant Media Server compatible
WebSocket signalling (L{tokengate.webrtc.signalling}) and, when tokengate
runs on Twisted's asyncio reactor, aiortc media: the engine
(L{tokengate.webrtc.engine}, chosen by L{tokengate.webrtc.media.make_engine}),
the publishing and playing peers (L{tokengate.webrtc.publish},
L{tokengate.webrtc.play}), and every private aiortc internal they rely on in
one module (L{tokengate.webrtc.aiortcpatches}).
"""
