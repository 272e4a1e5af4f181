/*
 * tokengate publish page: /{App}?id=StreamId&token=T[&autostart=false]
 *
 * Camera preview, then publish over the WebSocket signalling at
 * /{App}/websocket with the token from the URL ("publish"; the server answers
 * "start"; the browser offers, H.264 preferred; the server answers).
 * Right after the socket opens it asks for the STUN/TURN servers
 * ("getIceServerConfig" -> "iceServerConfig" with iceServers and
 * iceTransportPolicy) and creates the RTCPeerConnection with them, waiting at
 * most tokengateIce.WAIT ms for the answer (then it goes on without; ice.js).
 * State for tests: window.tokengatePublishState = {status, error, pc, config,
 * iceErrors}, status one of 'starting', 'ready', 'connecting', 'publishing',
 * 'finished', 'error'.
 */
(function () {
  'use strict';

  var MESSAGES = {
    unauthorized_access: 'Not authorized: the publish token is invalid, expired or already used',
    streamIdInUse: 'This stream is already being published',
    invalidStreamName: 'The stream id may only contain letters, digits, "_", "." and "-"',
    noStreamNameSpecified: 'No stream id (the id parameter) in the address',
    not_initialized_yet: 'WebRTC is not available on this server',
    webrtc_not_enabled: 'WebRTC is disabled for this application'
  };

  var app = document.querySelector('main').getAttribute('data-app');
  var params = new URLSearchParams(location.search);
  var streamId = params.get('id') || '';
  var token = params.get('token') || '';
  var autostart = !/^(false|0|no|off)$/i.test(params.get('autostart') || '');
  var preview = document.getElementById('preview');
  var statusBox = document.getElementById('status');
  var errorBox = document.getElementById('error');
  var startBtn = document.getElementById('start');
  var stopBtn = document.getElementById('stop');
  var ice = window.tokengateIce;  // ice.js
  var state = window.tokengatePublishState = {status: 'starting', error: null};
  var media = null, ws = null, pc = null, pinger = null, used = false;
  var iceConfig = null, pending = [];

  function setStatus(status, text) {
    state.status = status;
    statusBox.textContent = text;
  }

  function showError(message) {
    state.status = 'error';
    state.error = message;
    errorBox.textContent = message;
    errorBox.hidden = false;
    statusBox.hidden = true;
    startBtn.disabled = true;
    stopBtn.disabled = true;
    cleanup();
  }

  function cleanup() {
    if (pinger) { clearInterval(pinger); pinger = null; }
    if (pc) { pc.close(); pc = null; }
    if (ws) { var w = ws; ws = null; try { w.close(1000); } catch (e) { /* ignore */ } }
  }

  function send(m) { if (ws && ws.readyState === 1) { ws.send(JSON.stringify(m)); } }

  function preferH264(transceiver) {
    if (!transceiver.setCodecPreferences || !window.RTCRtpSender || !RTCRtpSender.getCapabilities) { return; }
    var codecs = RTCRtpSender.getCapabilities('video').codecs;
    var h264 = codecs.filter(function (c) { return /h264/i.test(c.mimeType); });
    var rest = codecs.filter(function (c) { return !/h264/i.test(c.mimeType); });
    if (h264.length) { transceiver.setCodecPreferences(h264.concat(rest)); }
  }

  function addCandidate(m) {
    pc.addIceCandidate({candidate: m.candidate, sdpMid: m.id, sdpMLineIndex: m.label})
      .catch(function () { /* ignore */ });
  }

  function offer(config) {
    if (!ws) { return; }  // ended meanwhile
    try {
      pc = new RTCPeerConnection(config);
    } catch (e) {
      showError('Bad ICE server configuration: ' + (e && e.message));
      return;
    }
    state.pc = pc;
    state.iceErrors = [];
    media.getTracks().forEach(function (track) {
      var t = pc.addTransceiver(track, {direction: 'sendonly', streams: [media]});
      if (track.kind === 'video') { preferH264(t); }
    });
    ice.watch(pc, config, streamId, send, state.iceErrors, function (detail) {
      if (pc) { showError('The WebRTC connection failed' + (detail ? ': ' + detail : '')); }
    });
    pc.createOffer()
      .then(function (o) { return pc.setLocalDescription(o); })
      .then(function () {
        send({command: 'takeConfiguration', streamId: streamId, type: 'offer',
              sdp: pc.localDescription.sdp});
      })
      .catch(function (e) { showError('WebRTC negotiation failed: ' + (e && e.message)); });
  }

  function publish() {
    if (used) { return; }
    used = true;  // a one-time token: one attempt per page load
    startBtn.disabled = true;
    setStatus('connecting', 'Connecting\u2026');
    ws = new WebSocket((location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host +
                       '/' + encodeURIComponent(app) + '/websocket');
    iceConfig = ice.awaitConfig();
    iceConfig.promise.then(function (config) { state.config = config; });
    ws.onopen = function () {
      send({command: 'getIceServerConfig'});
      send({command: 'publish', streamId: streamId, token: token, subscriberId: '',
            subscriberCode: '', streamName: streamId, mainTrack: '', video: true,
            audio: media.getAudioTracks().length > 0, metaData: '', role: ''});
      pinger = setInterval(function () { send({command: 'ping'}); }, 3000);
    };
    ws.onmessage = function (ev) {
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.command === 'iceServerConfig') {
        iceConfig.got(m);
      } else if (m.command === 'start') {
        iceConfig.promise.then(offer);
      } else if (m.command === 'takeConfiguration' && m.type === 'answer' && pc) {
        pc.setRemoteDescription({type: 'answer', sdp: m.sdp})
          .then(function () { pending.splice(0).forEach(addCandidate); })
          .catch(function (e) { showError('WebRTC negotiation failed: ' + (e && e.message)); });
      } else if (m.command === 'takeCandidate') {
        if (pc && pc.remoteDescription) { addCandidate(m); } else { pending.push(m); }
      } else if (m.command === 'notification' && m.definition === 'publish_started') {
        setStatus('publishing', 'Publishing ' + streamId);
        stopBtn.disabled = false;
      } else if (m.command === 'notification' && m.definition === 'publish_finished') {
        setStatus('finished', 'Finished');
        stopBtn.disabled = true;
        cleanup();
      } else if (m.command === 'error') {
        showError(MESSAGES[m.definition] || ('Publishing failed: ' + m.definition));
      }
    };
    ws.onclose = function (ev) {
      if (state.status === 'error' || state.status === 'finished') { return; }
      if (ev.code === 4001 || ev.code === 4003) {
        showError('Publishing was ended by the server: the token was ' +
                  (ev.code === 4001 ? 'expired' : 'revoked'));
      } else if (ws) {
        showError('The connection to the server closed (' + ev.code + ')');
      }
    };
  }

  startBtn.addEventListener('click', publish);
  stopBtn.addEventListener('click', function () {
    send({command: 'stop', streamId: streamId});
    stopBtn.disabled = true;
  });

  if (!streamId) {
    showError(MESSAGES.noStreamNameSpecified);
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.RTCPeerConnection) {
    showError('This browser cannot publish with WebRTC (a secure origin, https, is needed for the camera)');
    return;
  }
  navigator.mediaDevices.getUserMedia({video: true, audio: true})
    .catch(function () { return navigator.mediaDevices.getUserMedia({video: true}); })
    .then(function (stream) {
      media = stream;
      preview.srcObject = stream;
      setStatus('ready', 'Camera ready');
      startBtn.disabled = false;
      if (autostart) { publish(); }
    })
    .catch(function (e) { showError('No camera: ' + (e && e.message ? e.message : e)); });
})();
