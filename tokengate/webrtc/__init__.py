"""
WebRTC publish and play behind the gate: the Ant Media Server compatible
WebSocket signalling (L{tokengate.webrtc.signalling}) and, when tokengate
runs on Twisted's asyncio reactor, aiortc media (L{tokengate.webrtc.media}).
"""
