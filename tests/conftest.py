"""Test-wide setup.

PyAV is imported before anything can import decord: decord's bundled FFmpeg, loaded first in a
process, makes PyAV's libvpx (VP9) encoder fail to open ("avcodec_open2 ... returned 22").
"""

import av  # noqa: F401  (must precede decord; see above)
