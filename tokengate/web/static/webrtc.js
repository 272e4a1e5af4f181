/*
 * tokengate: play.html's WebRTC technology (window.tokengatePlayers.webrtc,
 * see the top of player.js), over the Ant Media Server compatible WebSocket
 * signalling at /{App}/websocket:
 *   -> {command: "play", streamId, token}
 *   <- {command: "takeConfiguration", type: "offer", sdp}   (no "start" for play)
 *   -> {command: "takeConfiguration", type: "answer", sdp}, takeCandidate both ways
 *   <- notification play_started / play_finished, or error (unauthorized_access
 *      -> 'auth', no_stream_exist -> 'notlive' unless its information is
 *      webrtc_not_enabled, anything else -> 'other': the next technology).
 * Right after the socket opens it also asks for the STUN/TURN servers
 * ({command: "getIceServerConfig"} -> "iceServerConfig" with iceServers and
 * iceTransportPolicy) and creates the RTCPeerConnection with them, waiting at
 * most tokengateIce.WAIT ms for the answer (then it goes on without; ice.js).
 * The RTCPeerConnection is exposed as window.tokengateWebRTC.pc (tests read
 * its getStats()), the configuration it got as .config, and the ICE candidate
 * errors (e.g. 401 from a TURN server refusing the credentials) as .iceErrors.
 */
(function () {
  'use strict';

  function appName() {
    var parts = location.pathname.split('/').filter(function (p) { return p; });
    return parts.length ? parts[0] : '';
  }

  function socketUrl(app) {
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/' +
      encodeURIComponent(app) + '/websocket';
  }

  var ice = window.tokengateIce;  // ice.js

  var players = window.tokengatePlayers = window.tokengatePlayers || {};
  var exposed = window.tokengateWebRTC = window.tokengateWebRTC || {pc: null};

  players.webrtc = {
    available: function () { return 'RTCPeerConnection' in window && 'WebSocket' in window; },
    start: function (ctx) {
      var streamId = ctx.id;
      var ws = new WebSocket(socketUrl(appName()));
      var pc = null;
      var stopped = false;
      var pinger = null;
      var iceConfig = ice.awaitConfig();  // .promise: the RTCConfiguration
      var pending = [];  // candidates that came before the peer connection

      function send(m) { if (ws.readyState === 1) { ws.send(JSON.stringify(m)); } }
      function fail(kind, detail) { if (!stopped) { ctx.fail(kind, detail); } }

      iceConfig.promise.then(function (config) { exposed.config = config; });

      function answer(offerSdp, config) {
        if (stopped) { return; }
        try {
          pc = exposed.pc = new RTCPeerConnection(config);
        } catch (e) {
          fail('other', 'bad ICE server configuration: ' + (e && e.message));
          return;
        }
        exposed.iceErrors = [];
        ice.watch(pc, config, streamId, send, exposed.iceErrors, function (detail) {
          fail('other', detail || 'the WebRTC connection failed');
        });
        pc.ontrack = function (e) {
          var stream = (e.streams && e.streams[0]) || new MediaStream([e.track]);
          if (ctx.video.srcObject !== stream) { ctx.video.srcObject = stream; }
          ctx.video.muted = !!ctx.mute;
          if (ctx.autoplay) {
            var p = ctx.video.play();
            if (p && p.catch) { p.catch(function () { /* autoplay refused: wait for the user */ }); }
          }
        };
        pc.setRemoteDescription({type: 'offer', sdp: offerSdp})
          .then(function () {
            pending.splice(0).forEach(addCandidate);
            return pc.createAnswer();
          })
          .then(function (a) { return pc.setLocalDescription(a); })
          .then(function () {
            send({command: 'takeConfiguration', streamId: streamId, type: 'answer',
                  sdp: pc.localDescription.sdp});
          })
          .catch(function (e) { fail('other', 'WebRTC negotiation failed: ' + (e && e.message)); });
      }

      function addCandidate(m) {
        pc.addIceCandidate({candidate: m.candidate, sdpMid: m.id, sdpMLineIndex: m.label})
          .catch(function () { /* ignore a bad candidate */ });
      }

      ws.onopen = function () {
        send({command: 'getIceServerConfig'});
        send({command: 'play', streamId: streamId, token: ctx.token || '', room: '',
              trackList: [], subscriberId: '', subscriberCode: '', viewerInfo: ''});
        pinger = setInterval(function () { send({command: 'ping'}); }, 3000);
      };
      ws.onmessage = function (ev) {
        var m;
        try { m = JSON.parse(ev.data); } catch (e) { return; }
        if (m.command === 'iceServerConfig') {
          iceConfig.got(m);
        } else if (m.command === 'takeConfiguration' && m.type === 'offer') {
          iceConfig.promise.then(function (config) { answer(m.sdp, config); });
        } else if (m.command === 'takeCandidate') {
          if (pc && pc.remoteDescription) { addCandidate(m); } else { pending.push(m); }
        } else if (m.command === 'error') {
          if (m.definition === 'unauthorized_access') {
            fail('auth', 'the server refused the token (unauthorized_access)');
          } else if (m.definition === 'no_stream_exist' && m.information === 'webrtc_not_enabled') {
            fail('other', 'WebRTC playback is disabled for this application (webrtc_not_enabled)');
          } else if (m.definition === 'no_stream_exist') {
            fail('notlive', 'no_stream_exist');
          } else {
            fail('other', 'WebRTC: ' + m.definition + (m.information ? ' (' + m.information + ')' : ''));
          }
        } else if (m.command === 'notification' && m.definition === 'play_finished') {
          fail('other', 'The stream ended');
        }
      };
      ws.onerror = function () { /* onclose follows */ };
      ws.onclose = function (ev) {
        if (pinger) { clearInterval(pinger); pinger = null; }
        if (ev.code === 4001 || ev.code === 4003) {
          fail('auth', 'the session was ended by the server (' + ev.code + ')');
        } else {
          fail('other', 'the signalling connection closed (' + ev.code + ')');
        }
      };
      return {
        stop: function () {
          if (stopped) { return; }
          stopped = true;
          if (pinger) { clearInterval(pinger); pinger = null; }
          send({command: 'stop', streamId: streamId});
          try { ws.close(1000); } catch (e) { /* ignore */ }
          if (pc) { pc.close(); }
        }
      };
    }
  };
})();
