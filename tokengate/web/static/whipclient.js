/*
 * tokengate: the WHIP/WHEP client (RFC 9725) shared by the WHIP publish page
 * (whip.html, whippublish.js) and play.html's WHEP technology (whep.js), as
 * window.tokengateWhip:
 *
 *   tokengateWhip.connect(pc, url, token) -> Promise of a session
 *
 * pc has its transceivers already (sendonly for WHIP, recvonly for WHEP).
 * connect creates the offer and POSTs it (Content-Type: application/sdp,
 * Authorization: Bearer token) before setting it locally, so that the ICE
 * servers of the answer's Link headers (STUN, TURN with its time-limited
 * credentials) are in the configuration before candidates are gathered;
 * then it sets the answer and trickles the candidates with PATCH
 * (application/trickle-ice-sdpfrag, If-Match: the answer's ETag), one
 * request at a time, ending with a=end-of-candidates.  The session is
 * {resource, etag, iceServers, status, patches, deleted, stop()} (patches:
 * the statuses of the PATCH requests, deleted: the DELETE's); stop() DELETEs
 * the resource (keepalive, so it works while the page unloads), then closes
 * pc.  As RFC 9725 (4.5.1)
 * asks, every request but a CORS preflight carries the Bearer token when
 * there is one (tokengate redeems it once, at the POST: the session's URL
 * is the capability).
 *
 * A refused POST rejects with an Error whose .status is the HTTP status
 * (0: no answer) and .reason the server's text/plain reason; kindOf(status,
 * reason) classifies it as play.html does: 'auth' (401, 403 but for
 * "not enabled"), 'notlive' (404), or 'other'.
 */
(function () {
  'use strict';

  var MAX_REASON = 300;

  function parseLinks(header) {
    // <uri>; rel="ice-server"; username="u"; credential="c"; ...
    var servers = [];
    if (!header) { return servers; }
    var parts = header.split(/,\s*(?=<)/);
    for (var i = 0; i < parts.length; i++) {
      var m = /^\s*<([^>]*)>(.*)$/.exec(parts[i]);
      if (!m) { continue; }
      var params = {};
      var re = /;\s*([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))/g;
      var p;
      while ((p = re.exec(m[2])) !== null) {
        params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
      }
      if (params.rel !== 'ice-server' || !/^(stuns?|turns?):/.test(m[1])) { continue; }
      var server = {urls: m[1]};
      if (params.username !== undefined) { server.username = params.username; }
      if (params.credential !== undefined) { server.credential = params.credential; }
      servers.push(server);
    }
    return servers;
  }

  function kindOf(status, reason) {
    if (status === 401) { return 'auth'; }
    if (status === 403) { return /not enabled/i.test(reason || '') ? 'other' : 'auth'; }
    if (status === 404) { return 'notlive'; }
    return 'other';
  }

  function refused(status, reason) {
    var e = new Error('HTTP ' + status + (reason ? ': ' + reason : ''));
    e.status = status;
    e.reason = reason || '';
    return e;
  }

  function iceCredentials(sdp) {
    var ufrag = /^a=ice-ufrag:(.*)$/m.exec(sdp);
    var pwd = /^a=ice-pwd:(.*)$/m.exec(sdp);
    return {ufrag: ufrag ? ufrag[1].trim() : '', pwd: pwd ? pwd[1].trim() : ''};
  }

  function connect(pc, url, token) {
    var session = {resource: null, etag: null, iceServers: [], status: 0, patches: [],
                   stop: null};
    var queue = [];      // candidates not sent yet
    var ended = false;   // end-of-candidates seen
    var sending = false;
    var stopped = false;
    var creds = null;
    var mid = null;

    function headers(extra) {
      if (token) { extra.Authorization = 'Bearer ' + token; }
      return extra;
    }

    function fragment(batch, end) {
      var lines = ['a=ice-ufrag:' + creds.ufrag, 'a=ice-pwd:' + creds.pwd,
                   'm=audio 9 UDP/TLS/RTP/SAVPF 0', 'a=mid:' + mid];
      batch.forEach(function (c) { lines.push('a=' + c); });
      if (end) { lines.push('a=end-of-candidates'); }
      return lines.join('\r\n') + '\r\n';
    }

    function flush() {
      if (sending || stopped || !session.resource || (!queue.length && !ended)) { return; }
      var batch = queue.splice(0, 32);
      var end = ended && !queue.length;
      if (end) { ended = false; }  // sent once
      sending = true;
      fetch(session.resource, {
        method: 'PATCH',
        headers: headers({'Content-Type': 'application/trickle-ice-sdpfrag',
                          'If-Match': session.etag}),
        body: fragment(batch, end)
      }).then(function (r) {
        session.patches.push(r.status);
      }, function () {
        session.patches.push(0);
      }).then(function () {
        sending = false;
        flush();
      });
    }

    pc.addEventListener('icecandidate', function (e) {
      if (e.candidate && e.candidate.candidate) {
        // one BUNDLE transport: the first section's candidates are its
        if (e.candidate.sdpMid !== null && e.candidate.sdpMid !== mid) { return; }
        queue.push(e.candidate.candidate.replace(/^a=/, ''));
      } else if (!e.candidate) {
        ended = true;
      }
      flush();
    });

    session.stop = function () {
      if (stopped) { return; }
      stopped = true;
      function close() {
        try { pc.close(); } catch (e) { /* closed already */ }
      }
      if (!session.resource) { close(); return; }
      // DELETE first, then close: closed first, the server would see the
      // connection go and end the session before the DELETE (then 404)
      fetch(session.resource, {method: 'DELETE', headers: headers({}), keepalive: true})
        .then(function (r) { session.deleted = r.status; }, function () { session.deleted = 0; })
        .then(close);
    };

    var offer;
    return pc.createOffer().then(function (o) {
      offer = o;
      creds = iceCredentials(o.sdp);
      var m = /^a=mid:(.*)$/m.exec(o.sdp);
      mid = m ? m[1].trim() : '0';
      return fetch(url, {method: 'POST', headers: headers({'Content-Type': 'application/sdp'}),
                         body: o.sdp})
        .catch(function (e) { throw refused(0, (e && e.message) || 'no answer'); });
    }).then(function (r) {
      session.status = r.status;
      return r.text().then(function (body) {
        if (r.status !== 201) {
          throw refused(r.status, body.slice(0, MAX_REASON).trim());
        }
        var location = r.headers.get('location');
        if (!location) { throw refused(r.status, 'the answer has no Location'); }
        session.resource = new URL(location, url).href;
        session.etag = r.headers.get('etag') || '*';
        session.iceServers = parseLinks(r.headers.get('link'));
        if (session.iceServers.length) {
          var config = pc.getConfiguration();
          config.iceServers = session.iceServers;
          pc.setConfiguration(config);
        }
        return pc.setLocalDescription(offer).then(function () {
          return pc.setRemoteDescription({type: 'answer', sdp: body});
        });
      });
    }).then(function () {
      flush();
      return session;
    }, function (e) {
      session.stop();
      throw e;
    });
  }

  window.tokengateWhip = {connect: connect, kindOf: kindOf, parseLinks: parseLinks};
})();
