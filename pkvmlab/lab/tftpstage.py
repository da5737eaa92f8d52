"""Stage a file for TFTP, also when the TFTP provider is a place's (``RemoteTFTPProvider``) on this host.

Why ours: labgrid's ``TFTPProviderDriver.stage`` copies to a remote provider's
host over SSH (``ManagedFile`` + ``sshmanager``, which first asks the host over
SSH whether the file is already there).  A one-machine lab has no SSH server, and
needs none: an exporter on this host (127.0.0.1, or this host's name) serves a
directory of this machine, so the file is linked in exactly as labgrid links it
for a local ``TFTPProvider`` (``ManagedFile`` on a local resource, the same
symlink).  Any other host goes through labgrid's SSH path unchanged.
"""

import os
import socket

from labgrid.resource.common import NetworkResource
from labgrid.resource.provider import TFTPProvider
from labgrid.util.managedfile import ManagedFile

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_this_host(host):
    return host in LOOPBACK or host in (socket.gethostname(), socket.getfqdn())


def stage(driver, path):
    """What ``driver.stage(path)`` does, without SSH when the provider's host is this one."""
    provider = driver.provider
    if isinstance(provider, NetworkResource) and not is_this_host(provider.host):
        return driver.stage(path)
    os.makedirs(provider.internal, exist_ok=True)
    if not isinstance(provider, NetworkResource):
        return driver.stage(path)
    local = TFTPProvider(target=None, name=None, internal=provider.internal, external=provider.external)
    link = os.path.join(provider.internal, os.path.basename(path))
    ManagedFile(path, local).sync_to_resource(symlink=link)
    return provider.external + link[len(provider.internal):]
