"""Identity: SSH user keys, node certificates, peer ids, board keys.

- :mod:`.keys` — load/generate/sign/verify OpenSSH keys, ``SHA256:`` fingerprints.
- :mod:`.certificate` — node certificates binding a Noise static key to an SSH key.
- :mod:`.lookup` — where the user's key is found; ``keygen``.
- :mod:`.board` — the board's long-lived identity key in its data folder.
"""

from .board import load_or_create_board_key
from .certificate import CERT_LIFETIME, NodeCertificate, NodeIdentity, PeerId
from .keys import PASSPHRASE_ENV, SshKey, SshPublicKey, generate_ed25519, load_private_key, write_private_key
from .lookup import default_key_candidates, default_user_name, find_key_path, keygen, load_user_key

__all__ = [
    "CERT_LIFETIME",
    "NodeCertificate",
    "NodeIdentity",
    "PeerId",
    "PASSPHRASE_ENV",
    "SshKey",
    "SshPublicKey",
    "generate_ed25519",
    "load_private_key",
    "write_private_key",
    "default_key_candidates",
    "default_user_name",
    "find_key_path",
    "keygen",
    "load_user_key",
    "load_or_create_board_key",
]
