#!/bin/bash -e
# Hardware set-up in config.txt (Bookworm: /boot/firmware/config.txt).
#  - SPI and the Infineon SLB9670 TPM 2.0 module (LetsTrust TPM, Iridium, ...): /dev/tpmrm0
#  - optionally the PL011 UART on GPIO 14/15 for an M-Bus HAT (MBUS_GPIO_UART=1 in the pi-gen
#    config): Bluetooth off, no serial console on it, so it is /dev/ttyAMA0 for the logger.
CONFIG="${ROOTFS_DIR}/boot/firmware/config.txt"
CMDLINE="${ROOTFS_DIR}/boot/firmware/cmdline.txt"
[ -f "${CONFIG}" ] || CONFIG="${ROOTFS_DIR}/boot/config.txt"
[ -f "${CMDLINE}" ] || CMDLINE="${ROOTFS_DIR}/boot/cmdline.txt"

add_line() {
	grep -qxF "$1" "${CONFIG}" || echo "$1" >> "${CONFIG}"
}

add_line ""
add_line "# mbus-ua-logger"
add_line "dtparam=spi=on"
add_line "dtoverlay=tpm-slb9670"
if [ "${MBUS_GPIO_UART:-0}" = "1" ]; then
	add_line "enable_uart=1"
	add_line "dtoverlay=disable-bt"
	sed -i -e 's/ \?console=serial0,[0-9]\+//' "${CMDLINE}"
	on_chroot <<'CHROOT'
systemctl disable hciuart.service 2>/dev/null || true
systemctl mask serial-getty@ttyAMA0.service
CHROOT
fi
