#!/usr/bin/env python
"""Offline stand-in for ansible-test's downloaded get-pip script.

ansible-test bootstraps pip in each virtual environment it creates by running
~/.ansible/test/cache/get_pip_<version>.py, which it otherwise downloads from the
internet. Our machines reach only the package registries, so `make sanity` copies
this file there: it bootstraps pip with ensurepip and then installs the requested
packages (e.g. pip==24.2) through the configured package index.
"""

import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def main():
    """Bootstrap pip, then install the packages named on the command line."""
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    command = [sys.executable, "-m", "pip", "install"]
    if os.path.exists(CA_BUNDLE):
        command += ["--cert", CA_BUNDLE]
    subprocess.check_call(command + args)


if __name__ == "__main__":
    main()
