/*
 * tokengate: play.html's WHEP technology (window.tokengatePlayers.whep, see
 * the top of player.js): POST /{App}/whep/{streamId} with the play token as
 * a Bearer token, a recvonly offer (video, audio); the answer's session is
 * trickled and DELETEd by whipclient.js (tokengateWhip).
 *
 * playOrder=whep,webrtc,hls tries it first.  A refusal is mapped as the
 * other technologies' are: 401 (and 403 from a security policy) is 'auth'
 * (shown, never retried with another technology: the token may be spent),
 * 404 'notlive', anything else, 403 "WebRTC is not enabled" included (the
 * token is kept), 'other': the next technology of playOrder.
 * The RTCPeerConnection is exposed as window.tokengateWHEP.pc (tests read
 * its getStats()), the session as .session.
 */
(function () {
  'use strict';

  function appName() {
    var parts = location.pathname.split('/').filter(function (p) { return p; });
    return parts.length ? parts[0] : '';
  }

  var players = window.tokengatePlayers = window.tokengatePlayers || {};
  var exposed = window.tokengateWHEP = window.tokengateWHEP || {pc: null, session: null};

  players.whep = {
    available: function () {
      return 'RTCPeerConnection' in window && !!window.fetch && !!window.tokengateWhip;
    },
    start: function (ctx) {
      var whip = window.tokengateWhip;
      var url = new URL('/' + encodeURIComponent(appName()) + '/whep/' +
                        encodeURIComponent(ctx.id), location.href).href;
      var stopped = false;
      var session = null;
      var pc = exposed.pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
      pc.addTransceiver('video', {direction: 'recvonly'});
      pc.addTransceiver('audio', {direction: 'recvonly'});
      var stream = new MediaStream();
      pc.ontrack = function (e) {
        stream.addTrack(e.track);
        if (ctx.video.srcObject !== stream) { ctx.video.srcObject = stream; }
        ctx.video.muted = !!ctx.mute;
        if (ctx.autoplay) {
          var p = ctx.video.play();
          if (p && p.catch) { p.catch(function () { /* autoplay refused: wait for the user */ }); }
        }
      };
      pc.onconnectionstatechange = function () {
        if (!stopped && pc.connectionState === 'failed') {
          ctx.fail('other', 'the WebRTC connection failed');
        }
      };
      whip.connect(pc, url, ctx.token).then(function (s) {
        session = exposed.session = s;
        if (stopped) { s.stop(); }
      }, function (e) {
        if (stopped) { return; }
        var status = e.status || 0;
        ctx.fail(whip.kindOf(status, e.reason),
                 'WHEP: ' + (status ? 'HTTP ' + status : 'no answer') +
                 (e.reason ? ' (' + e.reason + ')' : ''));
      });
      return {
        stop: function () {
          if (stopped) { return; }
          stopped = true;
          if (session) { session.stop(); } else { pc.close(); }
        }
      };
    }
  };

  window.addEventListener('pagehide', function () {
    if (exposed.session) { exposed.session.stop(); }
  });
})();
