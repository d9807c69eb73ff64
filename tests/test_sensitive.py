"""Each detector of tally.schemas.sensitive, on values it must catch and values it must pass."""

from __future__ import annotations

import pytest
from tally.schemas.sensitive import (
    entropy_bits,
    is_card,
    is_high_entropy,
    is_iban,
    is_ip,
    is_phone,
    is_secret,
    is_token,
    kind,
    luhn_ok,
    sensitive,
)

ORDINARY = ["tkt_01HXYZ", "12345", "1234567890", "acme-corp", "policy_sync", "ws_9", "2026-11-30",
            "annual-report-2024-final", "pi_3MtwBwLkdIwHu7ix28a3tqPa", "v1.2.3", "checkout", "de"]


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_ids_and_words_are_not_sensitive(value):
    assert sensitive(value) is None


@pytest.mark.parametrize("value", [
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "rk_test_abcdefgh12345678", "ghp_" + "a1B2" * 9,
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "xoxb-123456789012-abcdefghij",
    "AKIAIOSFODNN7EXAMPLE", "AIzaSyD-abcdefghijklmnopqrstuvwxyz01234", "glpat-abcdefghij0123456789",
    "sk-proj-abcdefghijklmnopqrstuvwxyz", "SG.abcdefghijklmnop.qrstuvwxyz0123456789",
])
def test_known_token_prefixes_are_secrets(value):
    assert is_secret(value) and sensitive(value) == "secret"


def test_jwt():
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    assert sensitive(jwt) == "jwt" and sensitive("/callback/" + jwt) == "jwt"
    assert sensitive("eyJhbGciOi") is None


def test_high_entropy_needs_length_mixed_classes_and_entropy():
    random_key = "Q3vT9xLp2mZ8rB6kN1wY4sD7fH0jG5cA"  # 32 chars, mixed
    assert is_high_entropy(random_key) and sensitive(random_key) == "secret"
    assert entropy_bits(random_key) > 4.2
    assert not is_high_entropy("0f8fad5b-d9cb-469f-a165-70867728950e")  # a UUID is an id
    assert not is_high_entropy("01HXYZ8K3M4N5P6Q7R8S9T0V1W")  # ULID: upper case only
    assert not is_high_entropy("aaaaaaaaaaaaaaaaBBBBBBBBBBBBBBBB1111")  # long but low entropy


def test_luhn_and_cards():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    for card in ("4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"):
        assert is_card(card) and sensitive(card) == "card"
    assert not is_card("4111111111111112")  # fails Luhn
    assert not is_card("1234567812345670")  # passes Luhn, no card network starts with 1
    assert not is_card("12345")


def test_ibans_with_their_check_digits():
    for iban in ("DE89370400440532013000", "GB82 WEST 1234 5698 7654 32", "NL91ABNA0417164300"):
        assert is_iban(iban) and sensitive(iban) == "iban"
    assert not is_iban("DE89370400440532013001")  # wrong check
    assert not is_iban("DE8937040044053201300")  # wrong length for DE


def test_ip_literals():
    for ip in ("203.0.113.7", "10.0.0.1", "2001:db8::1", "[2001:db8::1]", "::1", "fe80::1%eth0"):
        assert is_ip(ip) and sensitive(ip) == "ip"
    for not_ip in ("1.2.3", "v1.2.3.4", "deadbeef", "10.0.0.256", "cafe"):
        assert not is_ip(not_ip)


def test_phone_numbers():
    for phone in ("+4915112345678", "+1 (555) 123-4567", "030 1234 5678", "555-123-4567"):
        assert is_phone(phone) and sensitive(phone) == "phone"
    for not_phone in ("1234567890", "2026-11-30", "12-34", "+123"):
        assert not is_phone(not_phone)


def test_emails_anywhere_in_the_value():
    assert sensitive("alice@example.com") == "email"
    assert sensitive("user:alice.smith+tag@mail.example.org") == "email"
    assert sensitive("@handle") is None


def test_identifier_kinds_for_path_segments():
    assert kind("0f8fad5b-d9cb-469f-a165-70867728950e") == "uuid"
    assert kind("0f8fad5bd9cb469fa16570867728950e") == "uuid"
    assert kind("9f86d081884c7d659a2feaa0c55ad015") in ("uuid", "hex")
    assert kind("9f86d081884c7d65") == "hex"
    assert kind("Zm9vYmFyYmF6cXV4cXV1eDEyMw") == "token" and is_token("Zm9vYmFyYmF6cXV4cXV1eDEyMw")
    assert kind("k3j4h5g6f7d8s9a0q1w2e3r4") == "token"  # lower-case base32, digit-rich
    assert kind("annual-report-2024-final") is None and kind("checkout") is None and kind("12345") is None
