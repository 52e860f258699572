#!/bin/bash
# Provisions one flocker_async node of the Vagrant cluster (see Vagrantfile):
# ZFS on Linux, Docker, the daemon from the synced source tree, systemd.
#   vagrant-provision.sh ADDRESS OPERATOR_PUBLIC_KEY_LINE
set -euo pipefail
address="$1"
operator_key="$2"

export DEBIAN_FRONTEND=noninteractive
# ZFS on Linux lives in contrib and builds its module with DKMS.
sed -i 's/^Components: main$/Components: main contrib/' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true
sed -i -E 's/^(deb .* bookworm(-updates)? main)$/\1 contrib/' /etc/apt/sources.list 2>/dev/null || true
apt-get update -q
apt-get install -y -q "linux-headers-$(uname -r)" dpkg-dev
apt-get install -y -q zfs-dkms zfsutils-linux docker.io iptables python3-venv \
    mariadb-client
modprobe zfs

# A pool on a file (a second disk would do as well: zpool create flocker /dev/sdb).
if ! zpool list flocker >/dev/null 2>&1; then
    truncate -s 4G /var/lib/flocker-pool.img
    zpool create -m none flocker /var/lib/flocker-pool.img
fi

# The daemon, from the synced source tree, in its own virtualenv.
python3 -m venv /opt/flocker-async
/opt/flocker-async/bin/pip install -q --upgrade pip
/opt/flocker-async/bin/pip install -q /vagrant

install -d -m 0700 /var/lib/flocker-async
install -d -m 0755 /etc/flocker /flocker
printf '%s\n' "$operator_key" > /var/lib/flocker-async/operator_keys
chmod 0600 /var/lib/flocker-async/operator_keys
cat > /etc/flocker/node.yml <<NODE
address: ${address}
ssh_port: 4522
state_directory: /var/lib/flocker-async
zfs:
  pool: flocker
  mount_root: /flocker
docker_socket: /var/run/docker.sock
operator_keys: /var/lib/flocker-async/operator_keys
convergence_interval: 10
NODE

# The unit, with the virtualenv's twistd (the plugin is installed with the package).
sed 's#^ExecStart=/usr/local/bin/twistd#ExecStart=/opt/flocker-async/bin/twistd#' \
    /vagrant/config/flocker-node.service > /etc/systemd/system/flocker-node.service
systemctl daemon-reload
systemctl enable --now docker flocker-node

# What the operator adds to known_hosts.
for _ in $(seq 30); do
    [ -f /var/lib/flocker-async/ssh_host_ed25519_key.pub ] && break
    sleep 1
done
echo "known_hosts line for ${address}:"
echo "[${address}]:4522 $(cut -d' ' -f1,2 /var/lib/flocker-async/*host*.pub | head -1)"
