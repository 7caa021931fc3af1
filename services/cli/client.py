"""What the commands that are clients of a running service share (``audit packet``,
``sweep``, ``health``, ``access``, ``erase``, ``hold`` and ``import``): where the
service is, the token, the channel (plaintext or TLS), a refusal told as text, and
the argument types of their options."""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CONNECTION = """\
Connection: the audit tools that ask a running service (packet, sweep, health,
access, erase, hold) reach it at --address, or CONSENT_ADDRESS, else
127.0.0.1:50051, with the token in --token-file, else CONSENT_TOKEN, else
var/data/dev-token (what `make run` writes). Plaintext unless --cacert is given
(TLS), with --cert and --key for mutual TLS. A call the service refuses for now
(RESOURCE_EXHAUSTED with a retry delay: a rate limit, or the caller's most streams
open at once) is tried again after the delay, longer after each refusal in a row,
up to 8 refusals or 2 minutes of waiting."""
"""The paragraph each client tool's manual page ends its description with."""

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEV_TOKEN = Path("var/data/dev-token")


def add_connection_options(parser: argparse.ArgumentParser, timeout: int) -> None:
    """``--address``, ``--token-file``, ``--cacert``, ``--cert``, ``--key`` and
    ``--timeout`` (giving up after ``timeout`` seconds), which ``connect`` reads."""
    parser.add_argument(
        "--address", help=f"the service (default: $CONSENT_ADDRESS or {DEFAULT_ADDRESS})"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"a file holding the bearer token (default: $CONSENT_TOKEN, else {DEV_TOKEN})",
    )
    parser.add_argument("--cacert", type=Path, help="PEM CA to verify the server's certificate")
    parser.add_argument("--cert", type=Path, help="PEM client certificate, for mutual TLS")
    parser.add_argument("--key", type=Path, help="PEM key of --cert")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(timeout),
        metavar="SECONDS",
        help=f"give up after ({timeout})",
    )


def token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``, else $CONSENT_TOKEN, else the dev token.
    A file holding none is refused (``ValueError``): sent as it is, the service's
    answer, "expected 'Bearer <token>'", did not say that the file was empty."""
    if args.token_file is not None:
        return _held(args.token_file, f"--token-file {args.token_file}")
    if os.environ.get("CONSENT_TOKEN"):
        return os.environ["CONSENT_TOKEN"].strip()
    if DEV_TOKEN.exists():
        return _held(DEV_TOKEN, str(DEV_TOKEN))
    return None


def _held(path: Path, named: str) -> str:
    found = path.read_text().strip()
    if not found:
        raise ValueError(f"{named} is empty: it holds no token")
    return found


def address(args: argparse.Namespace) -> str:
    """``--address``, else $CONSENT_ADDRESS, else ``DEFAULT_ADDRESS``."""
    return args.address or os.environ.get("CONSENT_ADDRESS") or DEFAULT_ADDRESS


def connect(args: argparse.Namespace, tool: str) -> tuple[str, Any] | None:
    """The token and channel a client tool (``consent-ledger TOOL``) calls the
    service with; None after saying on standard error why there are none (the tool
    then exits 2, a usage error)."""
    try:
        found = token(args)
        opened = channel(args, address(args))
    except (OSError, ValueError) as exc:
        print(f"consent-ledger {tool}: {exc}", file=sys.stderr)
        return None
    if found is None:
        print(
            f"consent-ledger {tool}: no token: give --token-file or set CONSENT_TOKEN",
            file=sys.stderr,
        )
        return None
    return found, opened


def channel(args: argparse.Namespace, address: str) -> Any:
    """A channel to ``address``: plaintext, or TLS with ``--cacert`` (and mutual TLS
    with ``--cert`` and ``--key``); ValueError for options that do not go together."""
    import grpc

    if args.cacert is None:
        if args.cert or args.key:
            raise ValueError("--cert and --key go with --cacert")
        return grpc.insecure_channel(address)
    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.cacert.read_bytes(),
        private_key=args.key.read_bytes() if args.key else None,
        certificate_chain=args.cert.read_bytes() if args.cert else None,
    )
    return grpc.secure_channel(address, credentials)


def refusal(exc: Any) -> str:
    """A failed call's status, message, and the fields a ``BadRequest`` names."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    lines = [f"{exc.code().name}: {exc.details()}"]
    status = rpc_status.from_call(exc)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(lines)


def moment(text: str) -> datetime:
    """An ISO 8601 time; a date or a time without zone is read as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


RETRIES = 8
"""How many refusals in a row (RESOURCE_EXHAUSTED with a ``RetryInfo``) a client
tool waits out before it gives up and tells the refusal."""
RETRY_SECONDS = 120.0
"""The most it waits for them in all; and one wait at most ``RETRY_LONGEST``."""
RETRY_LONGEST = 30.0


class Backoff:
    """Waits out the service's refusals for now, as the README asks of a client: a
    RESOURCE_EXHAUSTED that carries a ``google.rpc.RetryInfo`` (a rate limit, or the
    most streams of a kind the caller may have open) is tried again after its delay,
    doubled after each refusal in a row and with up to half again of jitter (so
    callers refused together do not come back together), within ``RETRIES`` and
    ``RETRY_SECONDS``. Anything else, or past those bounds, is the caller's to tell."""

    def __init__(
        self,
        tool: str,
        tries: int = RETRIES,
        seconds: float = RETRY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.tool, self.tries, self.seconds, self._sleep = tool, tries, seconds, sleep
        self.refusals = 0  # in a row
        self.waited = 0.0
        self._told = False

    def wait(self, exc: Any) -> bool:
        """Whether to make the refused call again, having waited; False (nothing
        waited) for a refusal without a delay, or one past the bounds."""
        found = retry_after(exc)
        if found is None:
            return False
        delay, why = found
        pause = max(delay, min(delay * 2**self.refusals, RETRY_LONGEST))
        pause *= 1 + random.random() / 2
        if self.refusals >= self.tries or self.waited + pause > self.seconds:
            print(
                f"consent-ledger {self.tool}: gave up after {self.refusals + 1} refusals "
                f"in a row ({self.waited:.0f} s waited)",
                file=sys.stderr,
            )
            return False
        if not self._told:  # once: the next refusals are the same story
            print(
                f"consent-ledger {self.tool}: waiting {pause:.2g} s: the service refused "
                f"for now ({why}); trying again (up to {self.tries} times, "
                f"{self.seconds:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            self._told = True
        self.refusals += 1
        self.waited += pause
        self._sleep(pause)
        return True

    def reset(self) -> None:
        """A call went through: the next refusal is the first of a new run."""
        self.refusals, self.waited = 0, 0.0

    def call(self, make: Callable[[], T]) -> T:
        """``make()`` (a unary call), made again while it is refused for now."""
        import grpc

        while True:
            try:
                answer = make()
            except grpc.RpcError as exc:
                if not self.wait(exc):
                    raise
                continue
            self.reset()
            return answer

    def stream(self, make: Callable[[], Iterable[T]]) -> Iterator[T]:
        """The answers of ``make()`` (a call answered by a stream), made again while
        it is refused for now before its first answer: the service refuses a stream
        as it opens it, and after an answer a new call would repeat what came."""
        import grpc

        while True:
            answers = iter(make())
            try:
                first = next(answers)
            except StopIteration:
                return
            except grpc.RpcError as exc:
                if not self.wait(exc):
                    raise
                continue
            self.reset()
            yield first
            yield from answers
            return


def retry_after(exc: Any) -> tuple[float, str] | None:
    """A RESOURCE_EXHAUSTED's ``RetryInfo`` delay in seconds, and the limit it names
    (its ``QuotaFailure``, else its message); None for any other failure."""
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details that contradict the status: none to go by
        return None
    delay: float | None = None
    why = exc.details() or ""
    for detail in status.details if status else []:
        retry = error_details_pb2.RetryInfo()
        quota = error_details_pb2.QuotaFailure()
        if detail.Unpack(retry):
            delay = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Unpack(quota) and quota.violations:
            v = quota.violations[0]
            why = f"{v.description}; {v.subject}"
    return None if delay is None else (delay, why)


class Replay:
    """The messages a call streams to the service, for a call made again after a
    refusal for now: each call from ``attempt`` sends those the calls before it
    took, then the rest. gRPC takes them in a thread of its own, which may still
    wait for the next message when its call has been refused: what it gets then is
    kept for the next call, not lost. Once the service has answered, the call
    will not be made again (``answered``) and what was sent is let go."""

    def __init__(self, messages: Iterator[T]) -> None:
        self._messages = messages
        self._taken: deque[Any] = deque()  # from the ``_first``th message taken on
        self._first = 0
        self._call = 0
        self._answered = False
        self._taking = threading.Lock()  # one thread at a time takes from messages
        self._held = threading.Lock()  # guards the rest

    def answered(self) -> None:
        """The last call's service answered: it is the last."""
        self._answered = True

    def attempt(self) -> Iterator[Any]:
        """The messages for the next call; the calls before it stop taking them."""
        with self._held:
            self._call += 1
            call, at = self._call, self._first
        while True:
            found = self._next(call, at)
            if found is None:
                return
            at += 1
            yield found[0]

    def _next(self, call: int, at: int) -> tuple[Any] | None:
        """The message at ``at`` for ``call``, taking it if none has; None when the
        messages have ended or another call has taken over."""
        while True:
            with self._held:
                if call != self._call:
                    return None
                if at - self._first < len(self._taken):
                    return (self._message(at),)
            with self._taking:
                with self._held:
                    if call != self._call:
                        return None
                    if at - self._first < len(self._taken):
                        continue  # a refused call's thread took it meanwhile
                try:
                    message = next(self._messages)
                except StopIteration:
                    return None
                with self._held:
                    self._taken.append(message)
                    if call != self._call:  # kept for the call now under way
                        return None
                    return (self._message(at),)

    def _message(self, at: int) -> Any:
        message = self._taken[at - self._first]
        if self._answered:  # no call to come: it need not be kept
            self._taken.popleft()
            self._first += 1
        return message
