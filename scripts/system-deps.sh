#!/usr/bin/env bash
# Debian packages the embedded default data needs: Fashion-MNIST (default) and the emoji colour set.
# Installs them when run as root; otherwise says exactly what to install.
set -euo pipefail
PACKAGES="dataset-fashion-mnist fonts-noto-color-emoji unicode-data"
REQUIRED_FILES="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
/usr/share/unicode/emoji/emoji-test.txt"

missing=0
for f in $REQUIRED_FILES; do [ -e "$f" ] || missing=1; done
[ "$missing" = 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: $PACKAGES"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES
else
    echo "error: missing system data; run: sudo apt-get install -y $PACKAGES" >&2
    exit 1
fi
