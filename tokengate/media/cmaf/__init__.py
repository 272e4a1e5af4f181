# -*- test-case-name: tests.test_media_packager -*-
"""
Live CMAF packaging, behind L{tokengate.media.packager.Packager}:

  - L{tokengate.media.cmaf.segmenter}: FLV samples into CMAF parts and segments;
  - L{tokengate.media.cmaf.window}: the segments held per track, their bounds,
    and the lookups in them;
  - L{tokengate.media.cmaf.hls}: the LL-HLS playlists;
  - L{tokengate.media.cmaf.dash}: the DASH MPD;
  - L{tokengate.media.cmaf.text}: times, durations and URI queries in those documents.
"""
