/*
 * tokengate: the ICE side shared by the publish page (publish.js) and
 * play.html's WebRTC technology (webrtc.js), as window.tokengateIce:
 *
 * - rtcConfiguration(reply): the RTCConfiguration from an "iceServerConfig"
 *   reply (iceServers and iceTransportPolicy; a reply with only the Ant Media
 *   Server SDK's stunServerUri/turnServer* fields works too; null: none);
 * - awaitConfig(): {promise, got}: call got(reply) with the "iceServerConfig"
 *   reply; the promise resolves with its RTCConfiguration, or with the empty
 *   one after WAIT ms without a reply;
 * - watch(pc, config, streamId, send, errors, fail): sends the peer
 *   connection's candidates ("takeCandidate"), collects its ICE candidate
 *   errors (e.g. 401 from a TURN server refusing the credentials) into the
 *   array errors, and calls fail(detail) when gathering ends without a
 *   single candidate (detail says so) or the connection fails (detail '').
 */
(function () {
  'use strict';

  var WAIT = 2000;

  function rtcConfiguration(m) {
    var config = {iceServers: []};
    if (m && Array.isArray(m.iceServers)) {
      config.iceServers = m.iceServers;
    } else if (m && typeof m.stunServerUri === 'string' && m.stunServerUri) {
      // a server that sends only the Ant Media Server SDK's fields
      config.iceServers = [/^turns?:/.test(m.stunServerUri)
        ? {urls: m.stunServerUri, username: m.turnServerUsername || '',
           credential: m.turnServerCredential || ''}
        : {urls: m.stunServerUri}];
    }
    if (m && m.iceTransportPolicy === 'relay') { config.iceTransportPolicy = 'relay'; }
    return config;
  }

  function awaitConfig() {
    var got;
    var promise = new Promise(function (resolve) {
      var timer = setTimeout(function () { got(null); }, WAIT);
      got = function (m) {
        clearTimeout(timer);
        got = function () {};
        resolve(rtcConfiguration(m));
      };
    });
    return {promise: promise, got: function (m) { got(m); }};
  }

  function watch(pc, config, streamId, send, errors, fail) {
    var gathered = 0;
    pc.onicecandidateerror = function (e) {
      errors.push({url: e.url, errorCode: e.errorCode, errorText: e.errorText});
    };
    pc.onicegatheringstatechange = function () {
      // nothing to connect with: a relay-only policy whose TURN server
      // refused or could not be reached
      if (pc.iceGatheringState === 'complete' && !gathered) {
        fail('no ICE candidates' + (config.iceTransportPolicy === 'relay'
          ? ' (the TURN server refused the credentials or cannot be reached)' : ''));
      }
    };
    pc.onicecandidate = function (e) {
      if (e.candidate && e.candidate.candidate) {
        gathered += 1;
        send({command: 'takeCandidate', streamId: streamId, label: e.candidate.sdpMLineIndex,
              id: e.candidate.sdpMid, candidate: e.candidate.candidate});
      }
    };
    pc.onconnectionstatechange = function () {
      if (pc.connectionState === 'failed') { fail(''); }
    };
  }

  window.tokengateIce = {WAIT: WAIT, rtcConfiguration: rtcConfiguration,
                         awaitConfig: awaitConfig, watch: watch};
})();
