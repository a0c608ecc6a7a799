"""An OPC UA server in the shape of OPC 40100 Machine Vision: the state, the last result, a ResultReady event, and
two operator methods (select the recipe, set the review band). The node tree is in `opcua_model`.

The asyncua server runs on a `LoopThread` of its own. `publish` only hands the result to that loop, where one
writer task writes LastResult and fires the event in order; a queue of `QUEUE` results bounds what a stuck loop
can hold (oldest dropped, counted as failed). The state is refreshed from the hub every `STATUS_PERIOD_S`.

Rights: anyone may connect anonymously, browse, read and subscribe. SelectRecipe and SetReviewBand need the
operator: user name `operator` with the service's operator key as password (a service without keys lets every
client call them). A user name with a wrong password is refused at session activation; a call without operator
rights is refused as a whole with BadUserAccessDenied.

Applications: with basic256sha256 and `trusted_clients`, only a client whose certificate is in that folder gets a
session (asyncua's CertificateValidator with a TrustStore); a refusal is logged with the certificate's thumbprint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncua import Server, ua
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import struct_from_binary
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from inspector import __version__
from inspector.common.errors import InspectorError
from inspector.link.opcua_model import AddressSpace, build, node_id
from inspector.link.result import LineResult, LineStatus
from inspector.link.settings import OpcUaSettings
from inspector.link.sink import LinkError, LoopThread, Sink, SinkHealth, UnknownRecipe

if TYPE_CHECKING:
    from asyncua.server.internal_server import InternalServer

    from inspector.link.hub import LinkHub

log = logging.getLogger(__name__)

OPERATOR = "operator"  # the user name that, with the operator key as password, grants operator rights
QUEUE = 256
STATUS_PERIOD_S = 0.5
START_TIMEOUT_S = 60.0  # importing the NodeSet takes a few seconds on a small line box
_CALL = node_id(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
_BAD = ua.StatusCodes
# asyncua's default checks (validity dates, application URI in the certificate) and the trust list
CLIENT_CHECKS = CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.TRUSTED


class ClientTrust:
    """The trusted client certificates. asyncua checks the certificate a client sends with CreateSession; the
    secure channel's certificate is checked again at activation, as a client may leave that one out."""

    def __init__(self, folder: Path, store: TrustStore) -> None:
        self.folder = folder
        self.store = store
        self.validator = CertificateValidator(CLIENT_CHECKS, store)

    async def validate(self, certificate: x509.Certificate, client: ua.ApplicationDescription) -> None:
        try:
            await self.validator.validate(certificate, client)
        except ServiceError as exc:
            self.refused(certificate, ua.StatusCode(ua.UInt32(exc.code)).name, client.ApplicationUri)
            raise

    def channel_trusted(self, der: bytes | None) -> bool:
        if der is None:
            log.warning("OPC UA session refused: the secure channel has no client certificate")
            return False
        certificate = x509.load_der_x509_certificate(der)
        if self.store.validate(certificate):
            return True
        self.refused(certificate, "BadUserAccessDenied", None)
        return False

    def refused(self, certificate: x509.Certificate, status: str, uri: str | None) -> None:
        log.warning(
            "OPC UA client %s refused (%s): certificate %s, thumbprint %s; to trust it, copy it into %s",
            uri or "?",
            status,
            certificate.subject.rfc4514_string(),
            certificate.fingerprint(hashes.SHA1()).hex(),  # the OPC UA thumbprint is SHA-1
            self.folder,
        )


class OperatorUsers(UserManager):
    """Anonymous clients read; `operator` with the operator key may also call the operator methods."""

    def __init__(self, hub: LinkHub, trust: ClientTrust | None) -> None:
        self.hub = hub
        self.trust = trust

    def get_user(
        self, iserver: InternalServer, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if self.trust is not None and not self.trust.channel_trusted(certificate):
            return None
        if self.hub.is_operator(None):  # a service without keys: a test bench, where every client may act
            return User(role=UserRole.User, name=OPERATOR)
        if username is None:
            return User(role=UserRole.User)
        if username == OPERATOR and self.hub.is_operator(password):
            return User(role=UserRole.User, name=OPERATOR)
        log.warning(
            "OPC UA login as %r refused: wrong user name or password (user %r, operator key)", username, OPERATOR
        )
        return None  # the session is refused: BadUserAccessDenied


class OperatorRuleset(SimpleRoleRuleset):
    """asyncua's user rules, and: a Call that names an operator method needs the operator. The request is
    checked before asyncua runs it, since a method callback does not learn who called it."""

    def __init__(self, operator_methods: set[ua.NodeId]) -> None:
        super().__init__()
        self.operator_methods = operator_methods

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Buffer) -> bool:
        if not super().check_validity(user, action_type_id, body):
            return False
        if action_type_id != _CALL or user.name == OPERATOR:
            return True
        params = struct_from_binary(ua.CallParameters, body.copy())  # a copy: asyncua reads the body after us
        denied = [str(m.MethodId.Identifier) for m in params.MethodsToCall if m.MethodId in self.operator_methods]
        if denied:
            log.warning("OPC UA call of %s refused: needs user %r", ", ".join(denied), OPERATOR)
        return not denied


class OpcUaSink(Sink):
    kind = "opcua"

    def __init__(self, host: str, port: int, settings: OpcUaSettings) -> None:
        self.host, self.port, self.settings = host, port, settings
        self.name = f"opcua://{host}:{port}"
        self.endpoint = f"opc.tcp://{host}:{port}/"
        self._thread: LoopThread | None = None
        self._server: Server | None = None
        self._space: AddressSpace | None = None
        self._hub: LinkHub | None = None
        self._queue: asyncio.Queue[LineResult] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._status: LineStatus | None = None
        self._up = False
        self._published = 0
        self._failed = 0

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, hub: LinkHub) -> None:
        logging.getLogger("asyncua").setLevel(logging.ERROR)  # it logs every request at INFO, and much at WARNING
        logging.getLogger("asyncuagds.validate").setLevel(logging.CRITICAL)  # a traceback per untrusted client
        self._hub = hub
        credentials = self._credentials()
        trusted = self.settings.trusted_clients
        certificates = load_trusted_clients(trusted) if trusted is not None and credentials is not None else None
        nodeset = self.settings.nodeset
        if nodeset is not None and not Path(nodeset).is_file():
            raise LinkError(f"{self.name}: links.opcua.nodeset {nodeset} is not a file")
        thread = LoopThread(f"opcua-{self.port}")
        try:
            thread.run(self._open(hub, credentials, certificates), timeout=START_TIMEOUT_S)
        except TimeoutError as exc:
            thread.stop()
            raise LinkError(f"{self.name}: the server did not start within {START_TIMEOUT_S:g} s") from exc
        except Exception:
            thread.stop()
            raise
        self._thread = thread
        self._up = True
        if not hub.is_operator(None) and self.settings.security == "none":
            log.warning(
                "%s: security none sends the operator password in clear text; use basic256sha256 on a shared network",
                self.name,
            )
        if credentials is not None and certificates is None:
            log.warning("%s: any client certificate is accepted; set links.opcua.trusted_clients", self.name)
        elif certificates is not None:
            log.info("%s: %d trusted client certificate(s) from %s", self.name, len(certificates), trusted)

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._up = False
        if thread is None:
            return
        try:
            thread.run(self._close(), timeout=5)
        except Exception:  # a server that does not close cleanly must still let the service stop
            log.exception("%s did not close cleanly", self.name)
        finally:
            thread.stop()

    def publish(self, result: LineResult) -> None:
        thread = self._thread
        if thread is None or not self._up:
            self._failed += 1
            return
        thread.call(self._enqueue, result)

    def health(self) -> SinkHealth:
        server = self._server
        clients = len(server.bserver.clients) if self._up and server and server.bserver else 0
        if self._up:
            detail = f"listening on {self.endpoint} (security {self.settings.security}), {clients} client(s)"
        else:
            detail = "not running"
        return SinkHealth(
            name=self.name,
            kind=self.kind,
            up=self._up,
            detail=detail,
            published=self._published,
            failed=self._failed,
            clients=clients,
        )

    # ---- on the loop ----------------------------------------------------------------------------------------------

    async def _open(
        self,
        hub: LinkHub,
        credentials: tuple[x509.Certificate, PrivateKeyTypes] | None,
        trusted: list[x509.Certificate] | None,
    ) -> None:
        trust = None
        if trusted is not None and self.settings.trusted_clients is not None:
            trust = ClientTrust(self.settings.trusted_clients, await trust_store(trusted))
        server = Server(user_manager=OperatorUsers(hub, trust))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self.settings.server_name)
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        await server.set_build_info(
            "urn:inspector", "inspector", self.settings.server_name, __version__, __version__, datetime.now(UTC)
        )
        if credentials is None:
            await server.set_application_uri(f"urn:inspector:{self.settings.server_name}")
            policies = [ua.SecurityPolicyType.NoSecurity]
        else:
            certificate, key = credentials
            await server.set_application_uri(application_uri(certificate, self.settings.server_name))
            await server.load_certificate(certificate.public_bytes(serialization.Encoding.DER), format="der")
            await server.load_private_key(
                key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
                format="der",
            )
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if trust is not None:
                server.set_certificate_validator(trust.validate)
        nodeset = self.settings.nodeset
        try:
            space = await build(server, nodeset, self.settings.server_name, self._select_recipe, self._set_review_band)
        except Exception as exc:  # the model is ours: only a NodeSet that is not OPC 40100 can break it
            raise LinkError(f"{self.name}: cannot build the address space from {nodeset}: {exc}") from exc
        server.set_security_policy(policies, permission_ruleset=OperatorRuleset(space.operator_methods))
        self._status = hub.status()
        await space.write_status(self._status)
        try:
            await server.start()
        except OSError as exc:
            raise LinkError(f"{self.name}: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._server, self._space = server, space
        self._queue = asyncio.Queue(QUEUE)
        self._tasks = [asyncio.create_task(self._write_results()), asyncio.create_task(self._refresh_status())]

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop()
        # Sessions of clients that vanished keep tasks until their timeout; end them with the loop.
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def _enqueue(self, result: LineResult) -> None:
        assert self._queue is not None
        if self._queue.full():  # the writer is stuck: keep the newest, as the line needs the current part
            self._queue.get_nowait()
            self._failed += 1
        self._queue.put_nowait(result)

    async def _write_results(self) -> None:
        assert self._queue is not None and self._space is not None
        while True:
            result = await self._queue.get()
            try:
                await self._space.write_result(result)
                self._published += 1
            except Exception:  # one bad result must not end the writer
                self._failed += 1
                log.exception("%s could not publish result %d", self.name, result.sequence)
            await self._update_status()

    async def _refresh_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_PERIOD_S)
            try:
                await self._update_status()
            except Exception:  # the service's state could not be read this time; try again next period
                log.exception("%s could not refresh the state", self.name)

    async def _update_status(self) -> None:
        assert self._hub is not None and self._space is not None
        status = self._hub.status()
        if status != self._status:
            await self._space.write_status(status)
            self._status = status

    # ---- methods (operator rights are checked by OperatorRuleset before these run) -----------------------------

    async def _select_recipe(self, _parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        """SelectRecipe(Recipe) -> Model."""
        assert self._hub is not None
        if len(args) != 1:
            return _bad(_BAD.BadArgumentsMissing if not args else _BAD.BadTooManyArguments)
        value = args[0].Value
        recipe: int | str
        if isinstance(value, int) and not isinstance(value, bool):
            recipe = value
        elif isinstance(value, str):
            text = value.strip()
            recipe = int(text) if text.isdigit() else text or 0
        else:
            return _bad(_BAD.BadTypeMismatch)
        try:
            model = self._hub.select_recipe(recipe)
        except UnknownRecipe as exc:
            log.warning("OPC UA SelectRecipe refused: %s", exc)
            return _bad(_BAD.BadInvalidArgument)
        await self._update_status()
        return [ua.Variant(model, ua.VariantType.String)]

    async def _set_review_band(self, _parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
        """SetReviewBand(Model, Low, High): Low = High = 0 removes the band."""
        assert self._hub is not None
        if len(args) != 3:
            return _bad(_BAD.BadArgumentsMissing if len(args) < 3 else _BAD.BadTooManyArguments)
        name, low, high = (a.Value for a in args)
        if not isinstance(name, str) or not all(_is_number(v) for v in (low, high)):
            return _bad(_BAD.BadTypeMismatch)
        recipes = self._hub.status().recipes
        model = name or self._hub.selected_model or (recipes[0] if len(recipes) == 1 else "")
        if model not in recipes:
            log.warning("OPC UA SetReviewBand refused: model %r is not served (%s)", model, ", ".join(recipes))
            return _bad(_BAD.BadInvalidArgument)
        band = None if low == 0 and high == 0 else (float(low), float(high))
        if band is not None and not all(math.isfinite(v) for v in band):
            return _bad(_BAD.BadInvalidArgument)
        try:
            await asyncio.to_thread(self._hub.set_review_band, model, band)  # writes the calibration to disk
        except (InspectorError, ValueError) as exc:
            log.warning("OPC UA SetReviewBand %s %s refused: %s", model, band, exc)
            return _bad(_BAD.BadInvalidArgument)
        except Exception as exc:  # the service refuses for its own reasons (no active calibration)
            log.warning("OPC UA SetReviewBand %s %s refused: %s", model, band, exc)
            return _bad(_BAD.BadInvalidState)
        log.info("OPC UA operator set the review band of %s to %s", model, band)
        return []

    # ---- certificates -------------------------------------------------------------------------------------------

    def _credentials(self) -> tuple[x509.Certificate, PrivateKeyTypes] | None:
        """The certificate and key basic256sha256 needs, read before the server starts so a bad file says so."""
        if self.settings.security == "none":
            return None
        cert_path, key_path = self.settings.certificate, self.settings.private_key
        if cert_path is None or key_path is None:
            raise LinkError(
                f"{self.name}: security basic256sha256 needs links.opcua.certificate and links.opcua.private_key"
            )
        certificate = load_certificate(cert_path)
        key = load_private_key(key_path)
        public = certificate.public_key()
        if not isinstance(public, type(key.public_key())) or public != key.public_key():
            raise LinkError(f"{self.name}: private key {key_path} does not belong to certificate {cert_path}")
        return certificate, key


def load_certificate(path: Path) -> x509.Certificate:
    """A certificate in PEM or DER, whatever the file is called."""
    data = _read(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise LinkError(f"certificate {path} is not a PEM or DER X.509 certificate: {exc}") from exc


def load_private_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "private key")
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise LinkError(f"private key {path} is not an unencrypted PEM or DER key: {exc}") from exc


def load_trusted_clients(folder: Path) -> list[x509.Certificate]:
    """Every file in the folder must be a certificate: a bad one stops the start rather than lock a client out."""
    try:
        files = sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and not p.is_dir())
    except OSError as exc:
        raise LinkError(f"cannot read links.opcua.trusted_clients {folder}: {exc.strerror or exc}") from exc
    if not files:
        raise LinkError(f"links.opcua.trusted_clients {folder} holds no certificate: no client could connect")
    return [load_certificate(path) for path in files]


async def trust_store(certificates: list[x509.Certificate]) -> TrustStore:
    """asyncua's TrustStore reads only files named .der or .pem from its folders: write the certificates to such a
    folder, so the configured one may name its files as the integrator likes."""
    with tempfile.TemporaryDirectory(prefix="inspector-trust-") as folder:
        for number, certificate in enumerate(certificates):
            (Path(folder) / f"{number}.der").write_bytes(certificate.public_bytes(serialization.Encoding.DER))
        store = TrustStore([Path(folder)], [])
        await store.load()
    return store


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LinkError(f"cannot read the OPC UA {what} {path}: {exc.strerror or exc}") from exc


def application_uri(certificate: x509.Certificate, server_name: str) -> str:
    """The certificate's URI (clients check that it matches the server's), else `urn:inspector:<name>`."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier) if names else []
    return uris[0] if uris else f"urn:inspector:{server_name}"


def _bad(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
