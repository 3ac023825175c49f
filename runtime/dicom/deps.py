"""The optional DICOM libraries: imported only when a DICOM series is read, refused with the install hint.

pydicom reads the files; decoding a compressed transfer syntax needs a plugin. `edgeseg[dicom]` brings
pylibjpeg with its OpenJPEG (JPEG 2000) and RLE plugins (MIT-licensed). JPEG Lossless, common in CT
archives, needs python-gdcm, which edgeseg leaves to the user (pylibjpeg-libjpeg would decode it too,
but it is GPL-3.0 and edgeseg is Apache-2.0).
"""

from __future__ import annotations

from edgeseg.runtime.errors import InputError

INSTALL_HINT = "pip install 'edgeseg[dicom]'"


def require_pydicom(path=None):
    """The pydicom module, or an `InputError` that names the extra to install."""
    try:
        import pydicom
    except ImportError:
        raise InputError("is DICOM, and reading DICOM needs pydicom, which is not installed", path=path,
                         fix=INSTALL_HINT) from None
    return pydicom


def check_decoder(transfer_syntax, name) -> None:
    """Refuse, from the header, a compressed series whose pixels no installed plugin can decode."""
    pydicom = require_pydicom(name)
    from pydicom.pixels import get_decoder

    uid = pydicom.uid.UID(str(transfer_syntax))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(f"its pixels are stored with the transfer syntax {uid} ({uid.name}), which pydicom cannot "
                         "decode at all", path=name,
                         fix="export the series uncompressed (Explicit VR Little Endian) from the PACS") from None
    if decoder.is_available:
        return
    if uid in (pydicom.uid.JPEGLossless, pydicom.uid.JPEGLosslessSV1, pydicom.uid.JPEGExtended12Bit):
        fix = ("pip install python-gdcm (JPEG Lossless; not part of edgeseg[dicom] because the other decoder of it, "
               "pylibjpeg-libjpeg, is GPL-licensed), or export the series uncompressed")
    else:
        fix = f"{INSTALL_HINT} (pylibjpeg with its OpenJPEG and RLE plugins), or export the series uncompressed"
    raise InputError(f"its pixels are compressed ({uid.name}, {uid}) and no decoder for it is installed here", path=name,
                     fix=fix)
