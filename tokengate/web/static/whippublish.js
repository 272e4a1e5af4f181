/*
 * tokengate WHIP publish page: /{App}/whip.html?id=StreamId&token=T[&autostart=false]
 *
 * Camera preview, then publish over WHIP (RFC 9725) with whipclient.js:
 * POST /{App}/whip/{streamId} with the publish token as a Bearer token and
 * a sendonly offer (H.264 preferred); the candidates trickle by PATCH
 * (If-Match); Stop, and leaving the page, DELETE the session.  The STUN and
 * TURN servers are those of the answer's Link headers.
 * State for tests: window.tokengatePublishState = {status, error, pc,
 * session}, status one of 'starting', 'ready', 'connecting', 'publishing',
 * 'finished', 'error' (as the WebSocket publish page's).
 */
(function () {
  'use strict';

  var MESSAGES = {
    401: 'Not authorized: the publish token is invalid, expired or already used',
    409: 'This stream is already being published',
    429: 'Too many attempts from this address: try again later'
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
  var whip = window.tokengateWhip;  // whipclient.js
  var state = window.tokengatePublishState = {status: 'starting', error: null};
  var media = null, pc = null, session = null, used = false;

  function setStatus(status, text) {
    state.status = status;
    statusBox.textContent = text;
  }

  function end() {
    if (session) { session.stop(); session = null; } else if (pc) { pc.close(); }
    pc = null;
  }

  function showError(message) {
    state.status = 'error';
    state.error = message;
    errorBox.textContent = message;
    errorBox.hidden = false;
    statusBox.hidden = true;
    startBtn.disabled = true;
    stopBtn.disabled = true;
    end();
  }

  function preferH264(transceiver) {
    if (!transceiver.setCodecPreferences || !window.RTCRtpSender || !RTCRtpSender.getCapabilities) { return; }
    var codecs = RTCRtpSender.getCapabilities('video').codecs;
    var h264 = codecs.filter(function (c) { return /h264/i.test(c.mimeType); });
    var rest = codecs.filter(function (c) { return !/h264/i.test(c.mimeType); });
    if (h264.length) { transceiver.setCodecPreferences(h264.concat(rest)); }
  }

  function publish() {
    if (used) { return; }
    used = true;  // a one-time token: one attempt per page load
    startBtn.disabled = true;
    setStatus('connecting', 'Connecting\u2026');
    pc = state.pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
    media.getTracks().forEach(function (track) {
      var t = pc.addTransceiver(track, {direction: 'sendonly', streams: [media]});
      if (track.kind === 'video') { preferH264(t); }
    });
    var mine = pc;
    pc.onconnectionstatechange = function () {
      if (pc !== mine) { return; }
      if (mine.connectionState === 'connected') {
        setStatus('publishing', 'Publishing ' + streamId);
        stopBtn.disabled = false;
      } else if (mine.connectionState === 'failed') {
        showError('The WebRTC connection failed');
      } else if (mine.connectionState === 'disconnected' && state.status === 'publishing') {
        setStatus('connecting', 'Reconnecting\u2026');
      }
    };
    var url = new URL('/' + encodeURIComponent(app) + '/whip/' + encodeURIComponent(streamId),
                      location.href).href;
    whip.connect(pc, url, token).then(function (s) {
      session = state.session = s;
      if (pc !== mine) { s.stop(); }
    }, function (e) {
      if (pc !== mine) { return; }
      var status = e.status || 0;
      showError(MESSAGES[status] || ('Publishing failed: ' + (status ? 'HTTP ' + status : 'no answer') +
                                     (e.reason ? ' (' + e.reason + ')' : '')));
    });
  }

  startBtn.addEventListener('click', publish);
  stopBtn.addEventListener('click', function () {
    stopBtn.disabled = true;
    end();
    setStatus('finished', 'Finished');
  });
  window.addEventListener('pagehide', end);

  if (!streamId) {
    showError('No stream id (the id parameter) in the address');
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.RTCPeerConnection ||
      !whip || !window.fetch) {
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
