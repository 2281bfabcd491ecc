#!/bin/sh
# mbus-logger: runs the release /opt/mbus-ua-logger/current points at (the Debian package's
# release, or a newer signed update bundle). -I: no current directory, user site or PYTHON*
# variables on the module path, so nothing outside the release can shadow its code.
set -e
CURRENT=/opt/mbus-ua-logger/current
if [ ! -x "$CURRENT/venv/bin/python" ]; then
    echo "mbus-logger: no release is installed ($CURRENT is missing); reinstall the mbus-ua-logger package" >&2
    exit 2
fi
exec "$CURRENT/venv/bin/python" -I -c "import sys; from logger.cli import main; sys.exit(main())" "$@"
