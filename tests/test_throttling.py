"""Brute-force throttling of logins (per account and per address) and registrations."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from taskservice.api.peer import peer_ip
from taskservice.config import parse_networks
from taskservice.server import Application, build_server
from taskservice.services.client_address import client_address
from taskservice.v1 import auth_service_pb2 as pb
from tests.conftest import ManualClock, Stubs, make_settings, stubs_for
from tests.helpers import PASSWORD, fails, make_admin, register, unique_email
from tests.test_access_log import log_lines  # noqa: F401 - a fixture

THROTTLED = grpc.StatusCode.RESOURCE_EXHAUSTED
WINDOW_SECONDS = 600
LIMITS = {
    "login_max_failures_per_account": 3,
    "login_max_failures_per_address": 5,
    "register_max_per_address": 3,
    "throttle_window_seconds": WINDOW_SECONDS,
    "trusted_proxies": "127.0.0.1",
}


@pytest.fixture
async def servers(
    database_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Application, Application]]:
    """Two servers with small limits sharing one database and one clock the test moves."""
    apps = [
        await build_server(make_settings(database_url, workers=2, **LIMITS), clock=clock)
        for _ in range(2)
    ]
    for application in apps:
        await application.start()
    yield apps[0], apps[1]
    for application in apps:
        await application.stop(grace=None)


@pytest.fixture
async def stubs(servers: tuple[Application, Application]) -> AsyncIterator[Stubs]:
    async with stubs_for(servers[0]) as first:
        yield first


def _from(address: str) -> tuple[tuple[str, str]]:
    """Metadata a trusted proxy (127.0.0.1 here) adds for a client at `address`."""
    return (("x-forwarded-for", address),)


async def _login(
    stubs: Stubs, email: str, password: str = PASSWORD, address: str = "198.51.100.1"
) -> pb.LoginResponse:
    return await stubs.auth.Login(
        pb.LoginRequest(email=email, password=password), metadata=_from(address)
    )


async def _retry_delay(call: Awaitable[Any], reason: str = "LOGIN_THROTTLED") -> timedelta:
    """Await a call that must be RESOURCE_EXHAUSTED with `reason`; return its RetryInfo delay."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == THROTTLED, error.details()
    status = status_pb2.Status.FromString(
        dict(error.trailing_metadata())["grpc-status-details-bin"]
    )
    delays, reasons = [], []
    for detail in status.details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
        elif detail.Unpack(retry):
            delays.append(retry.retry_delay.ToTimedelta())
    assert reasons == [reason]
    assert len(delays) == 1, "a throttled call carries one RetryInfo"
    return delays[0]


async def test_failed_logins_are_throttled_per_account_before_any_bcrypt(
    log_lines: io.StringIO,  # noqa: F811 - the fixture
    servers: tuple[Application, Application],
    stubs: Stubs,
    clock: ManualClock,
) -> None:
    account = await register(stubs)
    for _ in range(3):
        await fails(_login(stubs, account.user.email, "wrong"), grpc.StatusCode.UNAUTHENTICATED)
    clock.advance(seconds=100)
    hashed = servers[0].hasher.computations
    # Even the right password, from another address, is not checked while throttled.
    delay = await _retry_delay(_login(stubs, account.user.email, address="198.51.100.2"))
    assert delay == timedelta(seconds=WINDOW_SECONDS - 100)
    await _retry_delay(_login(stubs, account.user.email.upper(), "wrong"))
    assert servers[0].hasher.computations == hashed
    throttled = servers[0].metrics.registry.get_sample_value(
        "taskservice_auth_throttled_total", {"kind": "login_throttled"}
    )
    assert throttled == 2
    entries = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    refusals = [e for e in entries if e.get("event") == "login_throttled"]
    assert len(refusals) == 2
    assert all(e["outcome"] == "denied" and e["request_id"] for e in refusals)
    assert PASSWORD not in log_lines.getvalue()
    clock.advance(seconds=WINDOW_SECONDS - 100)
    await _login(stubs, account.user.email)


async def test_wrong_current_passwords_share_the_accounts_limit_with_failed_logins(
    servers: tuple[Application, Application], stubs: Stubs, clock: ManualClock
) -> None:
    """ChangePassword checks a password too: a token holder gets no extra guesses through it."""
    account = await register(stubs)

    def change(current: str) -> Awaitable[Any]:
        request = pb.ChangePasswordRequest(current_password=current, new_password="a new one!")
        return stubs.auth.ChangePassword(request, metadata=account.metadata)

    await fails(_login(stubs, account.user.email, "wrong"), grpc.StatusCode.UNAUTHENTICATED)
    for _ in range(2):
        failure = await fails(change("wrong"), grpc.StatusCode.UNAUTHENTICATED)
        assert failure.reason == "PASSWORD_INCORRECT"
    hashed = servers[0].hasher.computations
    # Three failures in all: the right password is refused unchecked, on either path.
    await _retry_delay(change(PASSWORD), "PASSWORD_CHANGE_THROTTLED")
    await _retry_delay(_login(stubs, account.user.email))
    assert servers[0].hasher.computations == hashed
    clock.advance(seconds=WINDOW_SECONDS)
    for _ in range(2):
        await fails(change("wrong"), grpc.StatusCode.UNAUTHENTICATED)
    await change(PASSWORD)  # a success clears the count: three more failures would be allowed
    for _ in range(2):
        await fails(_login(stubs, account.user.email, "wrong"), grpc.StatusCode.UNAUTHENTICATED)
    await _login(stubs, account.user.email, "a new one!")


async def test_unknown_accounts_are_throttled_exactly_like_known_ones(stubs: Stubs) -> None:
    known = await register(stubs)
    answers = []
    for n, email in enumerate((known.user.email, unique_email("nobody"))):
        for _ in range(3):
            failure = await fails(
                _login(stubs, email, "wrong", address=f"198.51.100.{10 + n}"),
                grpc.StatusCode.UNAUTHENTICATED,
            )
            answers.append((failure.reason, failure.message))
        answers.append(
            (await _retry_delay(_login(stubs, email, "wrong", address=f"198.51.100.{20 + n}")), "")
        )
    assert answers[:4] == answers[4:]


async def test_a_successful_login_resets_the_accounts_count(stubs: Stubs) -> None:
    account = await register(stubs)
    for _ in range(2):
        await fails(_login(stubs, account.user.email, "wrong"), grpc.StatusCode.UNAUTHENTICATED)
    await _login(stubs, account.user.email)
    for _ in range(3):
        await fails(_login(stubs, account.user.email, "wrong"), grpc.StatusCode.UNAUTHENTICATED)
    await _retry_delay(_login(stubs, account.user.email))


async def test_failed_logins_are_throttled_per_client_address(
    stubs: Stubs, clock: ManualClock
) -> None:
    for _ in range(5):
        await fails(
            _login(stubs, unique_email("guess"), "wrong", address="203.0.113.9"),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    account = await register(stubs)
    clock.advance(seconds=30)
    delay = await _retry_delay(_login(stubs, account.user.email, address="203.0.113.9"))
    assert delay == timedelta(seconds=WINDOW_SECONDS - 30)
    # Another client (as the trusted proxy reports it) is not affected.
    await _login(stubs, account.user.email, address="203.0.113.10")


async def test_only_trusted_proxies_choose_the_address(database_url: str) -> None:
    settings = make_settings(database_url, **{**LIMITS, "trusted_proxies": "10.0.0.0/8"})
    application = await build_server(settings)
    await application.start()
    try:
        async with stubs_for(application) as stubs:
            for n in range(5):  # each claims another address; the peer is not a trusted proxy
                await fails(
                    _login(stubs, unique_email("spoof"), "wrong", address=f"203.0.113.{n}"),
                    grpc.StatusCode.UNAUTHENTICATED,
                )
            await _retry_delay(_login(stubs, unique_email("spoof"), address="203.0.113.99"))
    finally:
        await application.stop(grace=None)


async def test_the_count_is_shared_by_every_server(
    servers: tuple[Application, Application], stubs: Stubs
) -> None:
    account = await register(stubs)
    async with stubs_for(servers[1]) as second:
        for via in (stubs, second, stubs):
            await fails(_login(via, account.user.email, "wrong"), grpc.StatusCode.UNAUTHENTICATED)
        hashed = servers[1].hasher.computations
        await _retry_delay(_login(second, account.user.email))
        assert servers[1].hasher.computations == hashed


async def test_anonymous_registrations_are_throttled_per_address(
    servers: tuple[Application, Application], stubs: Stubs, clock: ManualClock
) -> None:
    admin = await make_admin(servers[0], stubs)

    async def anonymous(address: str) -> pb.RegisterResponse:
        return await stubs.auth.Register(
            pb.RegisterRequest(email=unique_email(), password=PASSWORD), metadata=_from(address)
        )

    for _ in range(3):
        await anonymous("192.0.2.1")
    hashed = servers[0].hasher.computations
    delay = await _retry_delay(anonymous("192.0.2.1"), "REGISTRATION_THROTTLED")
    assert delay == timedelta(seconds=WINDOW_SECONDS)
    assert servers[0].hasher.computations == hashed
    await anonymous("192.0.2.2")  # another address
    await stubs.auth.Register(  # an admin creating users is not throttled
        pb.RegisterRequest(email=unique_email(), password=PASSWORD),
        metadata=(*admin.metadata, *_from("192.0.2.1")),
    )
    member = await register(stubs)
    await _retry_delay(  # a regular user's token does not skip the throttle
        stubs.auth.Register(
            pb.RegisterRequest(email=unique_email(), password=PASSWORD),
            metadata=(*member.metadata, *_from("192.0.2.1")),
        ),
        "REGISTRATION_THROTTLED",
    )
    clock.advance(seconds=WINDOW_SECONDS)
    await anonymous("192.0.2.1")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.7", [], "198.51.100.7"),  # no proxy
        ("198.51.100.7", ["203.0.113.1"], "198.51.100.7"),  # an untrusted peer's header
        ("10.0.0.2", ["203.0.113.1"], "203.0.113.1"),  # one trusted proxy
        ("10.0.0.2", ["203.0.113.1, 10.0.0.3"], "203.0.113.1"),  # two trusted proxies
        ("10.0.0.2", ["6.6.6.6, 203.0.113.1"], "203.0.113.1"),  # a forged entry on the left
        ("10.0.0.2", ["6.6.6.6", "203.0.113.1"], "203.0.113.1"),  # the header sent twice
        ("10.0.0.2", ["not an address"], "10.0.0.2"),
        ("10.0.0.2", ["::ffff:203.0.113.1"], "203.0.113.1"),
        (None, ["203.0.113.1"], None),  # a Unix socket peer
    ],
)
def test_the_client_address_believes_only_trusted_proxies(
    peer: str | None, forwarded: list[str], expected: str | None
) -> None:
    trusted = parse_networks("10.0.0.0/8")
    assert client_address(peer, forwarded, trusted) == expected


@pytest.mark.parametrize(
    ("peer", "ip"),
    [("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"), ("unix:/tmp/s", None)],
)
def test_grpc_peers_name_their_ip(peer: str, ip: str | None) -> None:
    assert peer_ip(peer) == ip


async def test_concurrent_correct_logins_are_never_throttled(stubs: Stubs) -> None:
    account = await register(stubs)
    logins = await asyncio.gather(*(_login(stubs, account.user.email) for _ in range(8)))
    assert all(login.access_token for login in logins)
