"""Make `ansible_collections.kongops.upgrade` importable when pytest runs from the checkout.

Collection code imports itself by its full name, so the checkout is linked into a
temporary `ansible_collections/kongops/upgrade` tree that is put on sys.path.
"""

import atexit
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _install_collection_path():
    try:
        import ansible_collections.kongops.upgrade  # noqa: F401  pylint: disable=unused-import
        return
    except ImportError:
        pass
    root = tempfile.mkdtemp(prefix="kongops-collections-")
    atexit.register(shutil.rmtree, root, True)
    os.makedirs(os.path.join(root, "ansible_collections", "kongops"))
    os.symlink(REPO, os.path.join(root, "ansible_collections", "kongops", "upgrade"))
    sys.path.insert(0, root)


_install_collection_path()
