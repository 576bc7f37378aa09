"""Optional CURVE authentication and encryption between hosts (keys from files, `zmq.auth` certificate format).

  keys = create_curve_keys(dir)           # once: writes private/{server,client}.key_secret and public/*.key
  auth = start_authenticator(ctx, keys)   # server side, before binding; auth.stop() at shutdown
  curve_server(sock, keys) / curve_client(sock, curve_keys_from_files(dir))
Also importable from `shared.wire.transport`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import zmq
import zmq.auth


@dataclasses.dataclass(frozen=True)
class CurveKeys:
  """Attributes: server_public, server_secret (None on clients), client_public, client_secret (z85 bytes),
  public_keys_dir (the folder the authenticator trusts)."""

  server_public: bytes
  server_secret: bytes | None
  client_public: bytes
  client_secret: bytes | None
  public_keys_dir: str


def create_curve_keys(directory: str) -> CurveKeys:
  """Writes server/client keypairs (zmq.auth certificate files) into `directory`/{public,private}."""
  pub, priv = os.path.join(directory, "public"), os.path.join(directory, "private")
  os.makedirs(pub, exist_ok=True)
  os.makedirs(priv, mode=0o700, exist_ok=True)
  for name in ("server", "client"):
    p, s = zmq.auth.create_certificates(priv, name)
    os.replace(p, os.path.join(pub, os.path.basename(p)))
  return curve_keys_from_files(directory)


def curve_keys_from_files(directory: str) -> CurveKeys:
  """Loads keys written by `create_curve_keys` (or zmq.auth): private/{server,client}.key_secret,
  public/*.key. A missing secret file leaves that secret None (a client host holds no server secret)."""
  pub, priv = os.path.join(directory, "public"), os.path.join(directory, "private")

  def load(name: str) -> tuple[bytes, bytes | None]:
    secret_file = os.path.join(priv, f"{name}.key_secret")
    if os.path.exists(secret_file):
      return zmq.auth.load_certificate(secret_file)
    return zmq.auth.load_certificate(os.path.join(pub, f"{name}.key"))

  sp, ss = load("server")
  cp, cs = load("client")
  return CurveKeys(sp, ss, cp, cs, pub)


def start_authenticator(ctx: zmq.Context, keys: CurveKeys) -> Any:
  """Starts a ThreadAuthenticator accepting clients whose public keys sit in `keys.public_keys_dir`.
  Call before binding; call `.stop()` at shutdown."""
  from zmq.auth.thread import ThreadAuthenticator

  auth = ThreadAuthenticator(ctx)
  auth.start()
  auth.configure_curve(domain="*", location=keys.public_keys_dir)
  return auth


def curve_server(sock: zmq.Socket, keys: CurveKeys) -> None:
  sock.curve_secretkey = keys.server_secret
  sock.curve_publickey = keys.server_public
  sock.curve_server = True


def curve_client(sock: zmq.Socket, keys: CurveKeys) -> None:
  sock.curve_secretkey = keys.client_secret
  sock.curve_publickey = keys.client_public
  sock.curve_serverkey = keys.server_public
