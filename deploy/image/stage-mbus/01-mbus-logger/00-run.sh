#!/bin/bash -e
# Install the mbus-ua-logger package built on an arm64 machine (make deb on a Raspberry Pi 4/5
# running 64-bit Raspberry Pi OS) and copied to files/ before the build.
shopt -s nullglob
debs=(files/mbus-ua-logger_*_arm64.deb)
if [ "${#debs[@]}" -ne 1 ]; then
	echo "stage-mbus: put exactly one mbus-ua-logger_<version>_arm64.deb into ${PWD}/files" >&2
	exit 1
fi
install -m 0644 "${debs[0]}" "${ROOTFS_DIR}/tmp/mbus-ua-logger.deb"
on_chroot <<'CHROOT'
# apt resolves the package's Depends from the Raspberry Pi OS / Debian archive.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/mbus-ua-logger.deb
rm -f /tmp/mbus-ua-logger.deb
# The package enables the unit; it starts once enrolment wrote /etc/mbus-logger/logger.toml.
systemctl is-enabled mbus-logger.service
CHROOT
# The manufacturer's update key, pinned in the image when it is given (files/update-signing.pub);
# otherwise the factory station pins it at enrolment (mbus-logger update trust).
if [ -f files/update-signing.pub ]; then
	install -d -m 0755 "${ROOTFS_DIR}/etc/mbus-logger/trust"
	install -m 0644 files/update-signing.pub "${ROOTFS_DIR}/etc/mbus-logger/trust/update-signing.pub"
fi
