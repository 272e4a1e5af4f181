/*
 * tokengate embedded player (play.html).
 *
 * URL parameters (as the reference player's):
 *   id         stream id (required)
 *   playOrder  comma list of webrtc, whep, hls, dash, vod; default "webrtc,hls"
 *              (webrtc: the WebSocket signalling, webrtc.js; whep: WHEP,
 *              whep.js)
 *   token      one-time (or JWT) play token, passed once, on the first request
 *   autoplay   default true ("false"/"0" waits for the user)
 *   mute       default true, so that autoplay is allowed
 *
 * The token is spent by the first request that the server grants, so there is
 * no probing: each technology starts directly, and its fatal HTTP errors are
 * mapped to a message (403: not authorized, 404: not live).  The next
 * technology in playOrder is tried only after a failure that is not an
 * authorization failure, and only if the failed one never played.
 *
 * Technologies live in window.tokengatePlayers; hls, dash and vod are built
 * in, and another script loaded before this one may register more, e.g.
 *
 *   window.tokengatePlayers = window.tokengatePlayers || {};
 *   window.tokengatePlayers.webrtc = {
 *     available: function () { return 'RTCPeerConnection' in window; },
 *     start: function (ctx) { ...; return {stop: function () {...}}; }
 *   };
 *
 * ctx (the same for every technology):
 *   video           the <video> element to play into
 *   id, token       the stream id and token ("" when none)
 *   autoplay, mute  booleans
 *   url(path)       absolute URL of path (relative to the page) with
 *                   ?token=... appended when there is a token
 *   playing()       optional: report that media flows (the page also
 *                   watches the video element)
 *   fail(kind, message)
 *                   report a fatal failure; kind is 'auth' (token refused:
 *                   never retried with another technology), 'notlive' or
 *                   'other'
 *   httpStatus(url) best-effort HTTP status of the last request for url,
 *                   from the Resource Timing API (0 when unknown)
 *   loadScript(src) load a script relative to player.js; returns a Promise
 * A technology that is not registered, or whose available() is false, is
 * skipped.
 *
 * Error mapping: hls.js and dash.js report the HTTP status of a failed
 * request.  A media element (vod, native HLS) does not, so when it fails
 * before receiving any media, the page asks once more with HEAD, after the
 * failure, to tell a refused token (403) from a stream that is not live (404).
 *
 * State for tests and embedders, refreshed every 250 ms and on media events:
 *   window.tokengateState = {tech, status: 'loading'|'playing'|'error',
 *                            error, currentTime, attempts: [{tech, kind, error, detail}]}
 * status is 'loading' until media plays (with autoplay=false, until the
 * viewer presses play), 'loading' again while it rebuffers, 'error' for good;
 * attempts lists the technologies that failed or were unavailable
 * (kind 'unavailable', 'auth', 'notlive' or 'other').
 */
(function () {
  'use strict';

  var MESSAGES = {
    auth: 'Not authorized: the token is invalid, expired or already used',
    notlive: 'The stream is not live'
  };
  var KNOWN = ['webrtc', 'whep', 'hls', 'dash', 'vod'];
  var SCRIPT_BASE = (document.currentScript && document.currentScript.src) || location.href;

  var video = document.getElementById('video');
  var statusBox = document.getElementById('status');
  var errorBox = document.getElementById('error');

  var state = window.tokengateState = {
    tech: null, status: 'loading', error: null, currentTime: 0, attempts: [],
    liveLatency: null
  };

  function flag(params, name, dflt) {
    var v = params.get(name);
    if (v === null || v === '') { return dflt; }
    return !/^(false|0|no|off)$/i.test(v);
  }

  var params = new URLSearchParams(location.search);
  var streamId = (params.get('id') || params.get('name') || '').trim();
  var token = params.get('token') || '';
  var autoplay = flag(params, 'autoplay', true);
  var mute = flag(params, 'mute', true);
  var playOrder = (params.get('playOrder') || 'webrtc,hls').split(',')
    .map(function (s) { return s.trim().toLowerCase(); })
    .filter(function (s, i, all) { return KNOWN.indexOf(s) >= 0 && all.indexOf(s) === i; });

  video.muted = mute;
  video.autoplay = autoplay;

  // ---- state and display ------------------------------------------------

  function refresh() {
    state.currentTime = video.currentTime || 0;
  }

  function setStatus(status) {
    state.status = status;
    refresh();
    statusBox.hidden = status !== 'loading';
  }

  function showError(message) {
    state.error = message;
    setStatus('error');
    errorBox.textContent = message;
    errorBox.hidden = false;
    video.hidden = true;
    statusBox.hidden = true;
  }

  function messageFor(kind, detail) {
    return MESSAGES[kind] || ('Playback failed: ' + (detail || 'unknown error'));
  }

  setInterval(refresh, 250);

  // ---- helpers offered to technologies ----------------------------------

  function withToken(path) {
    var u = new URL(path, location.href);
    if (token) { u.searchParams.set('token', token); }
    return u.href;
  }

  function httpStatus(url) {
    if (!window.performance || !performance.getEntriesByName) { return 0; }
    var entries = performance.getEntriesByName(url);
    for (var i = entries.length - 1; i >= 0; i--) {
      if (entries[i].responseStatus) { return entries[i].responseStatus; }
    }
    return 0;
  }

  function kindOfStatus(status) {
    if (status === 401 || status === 403) { return 'auth'; }
    if (status === 404 || status === 410) { return 'notlive'; }
    return 'other';
  }

  var scripts = {};
  function loadScript(src) {
    var url = new URL(src, SCRIPT_BASE).href;
    if (!scripts[url]) {
      scripts[url] = new Promise(function (resolve, reject) {
        var s = document.createElement('script');
        s.src = url;
        s.onload = function () { resolve(); };
        s.onerror = function () {
          delete scripts[url];
          reject(new Error('could not load ' + src));
        };
        document.head.appendChild(s);
      });
    }
    return scripts[url];
  }

  function hasMSE() {
    return !!(window.MediaSource || window.ManagedMediaSource || window.WebKitMediaSource);
  }

  function startVideo() {
    if (!autoplay) { return; }
    var p = video.play();
    if (p && p.catch) {
      p.catch(function (e) {
        // Unmuted autoplay refused by the browser: play muted instead.
        if (e && e.name === 'NotAllowedError' && !video.muted) {
          video.muted = true;
          video.play().catch(function () {});
        }
      });
    }
  }

  // ---- built-in technologies --------------------------------------------

  var hlsTech = {
    available: function () {
      return hasMSE() || !!video.canPlayType('application/vnd.apple.mpegurl');
    },
    start: function (ctx) {
      var url = ctx.url('streams/' + encodeURIComponent(ctx.id) + '.m3u8');
      if (!hasMSE()) {
        // Safari on iOS: no MSE, native HLS.
        return nativeStart(ctx, url, 'native HLS');
      }
      var hls = null;
      var stopped = false;
      var recovered = false;
      ctx.loadScript('vendor/hls.min.js').then(function () {
        if (stopped) { return; }
        var Hls = window.Hls;
        if (!Hls || !Hls.isSupported()) {
          if (video.canPlayType('application/vnd.apple.mpegurl')) {
            nativeStart(ctx, url, 'native HLS');
          } else {
            ctx.fail('other', 'this browser cannot play HLS');
          }
          return;
        }
        hls = new Hls({lowLatencyMode: true, backBufferLength: 30});
        hls.on(Hls.Events.MANIFEST_PARSED, function () { startVideo(); });
        // Live latency for operators and benchmarks: how far the frame on
        // screen is behind the wall clock (the server stamps each segment
        // with the time its first frame arrived, EXT-X-PROGRAM-DATE-TIME).
        hls.on(Hls.Events.FRAG_CHANGED, function () {
          var when = hls && hls.playingDate;
          state.liveLatency = when ? (Date.now() - when.getTime()) / 1000 : null;
        });
        hls.on(Hls.Events.ERROR, function (event, data) {
          if (!data || !data.fatal || stopped) { return; }
          if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
            recovered = true;
            hls.recoverMediaError();
            return;
          }
          var status = (data.response && data.response.code) ||
            (data.networkDetails && data.networkDetails.status) || 0;
          if (!status && data.url) { status = ctx.httpStatus(data.url); }
          var detail = data.details + (status ? ' (HTTP ' + status + ')' : '');
          ctx.fail(data.type === Hls.ErrorTypes.NETWORK_ERROR ? kindOfStatus(status) : 'other', detail);
        });
        hls.loadSource(url);
        hls.attachMedia(video);
      }, function (e) {
        if (video.canPlayType('application/vnd.apple.mpegurl')) {
          nativeStart(ctx, url, 'native HLS');
        } else {
          ctx.fail('other', 'the HLS library is missing (' + e.message + ')');
        }
      });
      return {
        stop: function () {
          stopped = true;
          if (hls) { hls.destroy(); hls = null; }
        }
      };
    }
  };

  var dashTech = {
    available: hasMSE,
    start: function (ctx) {
      var id = encodeURIComponent(ctx.id);
      var url = ctx.url('streams/' + id + '/' + id + '.mpd');
      var player = null;
      var stopped = false;
      ctx.loadScript('vendor/dash.all.min.js').then(function () {
        if (stopped) { return; }
        var dashjs = window.dashjs;
        if (!dashjs || !dashjs.MediaPlayer) {
          ctx.fail('other', 'the DASH library is missing');
          return;
        }
        player = dashjs.MediaPlayer().create();
        player.updateSettings({
          debug: {logLevel: dashjs.Debug ? dashjs.Debug.LOG_LEVEL_WARNING : 2},
          streaming: {
            // A token cannot be retried: fail fast on a refused manifest.
            retryAttempts: {MPD: 1},
            // The MPD suggests a long presentation delay (players such as
            // GStreamer's need 30 s of media ahead); this page plays three
            // segments behind the live edge instead.
            delay: {liveDelayFragmentCount: 3, useSuggestedPresentationDelay: false},
            utcSynchronization: {
              // The MPD normally names the server's clock (UTCTiming); never
              // fall back to a third-party time server.
              defaultTimingSource: {
                scheme: 'urn:mpeg:dash:utc:http-iso:2014',
                value: new URL('/time', location.href).href
              }
            }
          }
        });
        player.on(dashjs.MediaPlayer.events.ERROR, function (e) {
          if (stopped) { return; }
          var err = (e && e.error) || {};
          var data = err.data || {};
          var status = (data.response && data.response.status) || 0;
          if (!status && data.request && data.request.url) {
            status = ctx.httpStatus(data.request.url);
          }
          if (!status && err.code === 11) { status = ctx.httpStatus(url); }
          var detail = (err.message || ('error ' + err.code)) + (status ? ' (HTTP ' + status + ')' : '');
          ctx.fail(status ? kindOfStatus(status) : 'other', detail);
        });
        player.initialize(video, url, autoplay);
      }, function (e) {
        ctx.fail('other', 'the DASH library is missing (' + e.message + ')');
      });
      return {
        stop: function () {
          stopped = true;
          if (player) {
            try { player.reset(); } catch (e) { /* already torn down */ }
            player = null;
          }
        }
      };
    }
  };

  function nativeStart(ctx, url, what) {
    var stopped = false;
    function report(status) {
      if (stopped) { return; }
      var err = video.error;
      var detail = what + ' error' + (err ? ' ' + err.code + (err.message ? ': ' + err.message : '') : '') +
        (status ? ' (HTTP ' + status + ')' : '');
      ctx.fail(status >= 200 && status < 300 ? 'other' : kindOfStatus(status), detail);
    }
    function onError() {
      var status = ctx.httpStatus(url);
      if (status || video.readyState > 0 || !window.fetch) {
        report(status);
        return;
      }
      // The media element hides the HTTP status of its requests (Resource
      // Timing reports 0).  It got no media at all, so its request was most
      // likely refused: ask once with HEAD to tell 403 from 404.  This runs
      // only after the failure, never before playing; a token the server
      // did grant is answered from its session (or refused, if the server
      // has no retry window).
      fetch(url, {method: 'HEAD', cache: 'no-store', credentials: 'same-origin'})
        .then(function (r) { report(r.status); }, function () { report(0); });
    }
    video.addEventListener('error', onError);
    video.src = url;
    startVideo();
    return {
      stop: function () {
        stopped = true;
        video.removeEventListener('error', onError);
        video.removeAttribute('src');
        video.load();
      }
    };
  }

  var vodTech = {
    available: function () { return true; },
    start: function (ctx) {
      return nativeStart(ctx, ctx.url('streams/' + encodeURIComponent(ctx.id) + '.mp4'), 'MP4');
    }
  };

  var players = window.tokengatePlayers = window.tokengatePlayers || {};
  players.hls = players.hls || hlsTech;
  players.dash = players.dash || dashTech;
  players.vod = players.vod || vodTech;

  // ---- running playOrder --------------------------------------------------

  var current = null;   // {name, handle, done, started}

  video.addEventListener('playing', function () {
    if (current && !current.done) { current.started = true; setStatus('playing'); }
  });
  video.addEventListener('timeupdate', function () {
    if (current && !current.done && !video.paused && video.currentTime > 0) {
      current.started = true;
      if (state.status !== 'playing') { setStatus('playing'); } else { refresh(); }
    }
  });
  video.addEventListener('canplay', function () {
    // Without autoplay the page waits for the viewer: no spinner text.
    if (current && !current.done && video.paused) { statusBox.hidden = true; }
  });
  video.addEventListener('waiting', function () {
    if (current && !current.done && state.status === 'playing') { setStatus('loading'); }
  });

  function finalMessage() {
    var attempts = state.attempts.filter(function (a) { return a.kind !== 'unavailable'; });
    if (!attempts.length) {
      return messageFor('other', 'no playback technology of "' +
        playOrder.join(',') + '" is available in this browser');
    }
    var last = attempts[attempts.length - 1];
    // A refusal right after another technology failed on its own is most
    // likely the token it had already spent: show the first failure.
    if (last.kind === 'auth') {
      for (var i = 0; i < attempts.length - 1; i++) {
        if (attempts[i].kind === 'other') { return attempts[i].error; }
      }
    }
    return last.error;
  }

  function tryTech(index) {
    if (index >= playOrder.length) {
      state.tech = null;
      showError(finalMessage());
      return;
    }
    var name = playOrder[index];
    var tech = players[name];
    var ok = false;
    try { ok = !!(tech && tech.start && (!tech.available || tech.available())); } catch (e) { ok = false; }
    if (!ok) {
      state.attempts.push({tech: name, kind: 'unavailable', error: name + ' is not available'});
      tryTech(index + 1);
      return;
    }
    var run = {name: name, handle: null, done: false, started: false};
    current = run;
    state.tech = name;
    setStatus('loading');
    var ctx = {
      video: video, id: streamId, token: token, autoplay: autoplay, mute: mute,
      url: withToken, httpStatus: httpStatus, loadScript: loadScript,
      playing: function () {
        if (!run.done) { run.started = true; setStatus('playing'); }
      },
      fail: function (kind, detail) {
        if (run.done) { return; }
        run.done = true;
        if (kind !== 'auth' && kind !== 'notlive') { kind = 'other'; }
        var message = messageFor(kind, detail);
        state.attempts.push({tech: name, kind: kind, error: message, detail: detail || ''});
        if (window.console) { console.warn('tokengate player: ' + name + ' failed: ' + (detail || kind)); }
        try { if (run.handle && run.handle.stop) { run.handle.stop(); } } catch (e) { /* ignore */ }
        if (kind === 'auth' || run.started) {
          showError(message);
        } else {
          setTimeout(function () { tryTech(index + 1); }, 0);
        }
      }
    };
    try {
      var handle = tech.start(ctx);
      if (handle && typeof handle.then === 'function') {
        handle.then(function (h) { run.handle = h; if (run.done && h && h.stop) { h.stop(); } },
                    function (e) { ctx.fail('other', (e && e.message) || String(e)); });
      } else {
        run.handle = handle;
      }
    } catch (e) {
      ctx.fail('other', (e && e.message) || String(e));
    }
  }

  if (!streamId) {
    showError('Playback failed: no stream id (the id parameter) in the address');
  } else if (!playOrder.length) {
    showError('Playback failed: playOrder names no known technology (webrtc, whep, hls, dash, vod)');
  } else {
    tryTech(0);
  }
})();
