"""The conformance suite of the ``SubjectKeys`` port, run against every adapter.

Subclass ``SubjectKeysSuite`` and provide a ``keys`` fixture (an empty store)."""

from __future__ import annotations

import asyncio

from ledger.ports import SubjectKeys

PHONE, BRAND = "+14155550123", "acme"


class SubjectKeysSuite:
    async def test_a_subject_keeps_one_key_until_it_is_destroyed(self, keys: SubjectKeys) -> None:
        first = await keys.current(PHONE, BRAND)
        again = await keys.current(PHONE, BRAND)

        assert first == again
        assert len(first.secret) == 32

    async def test_subjects_have_keys_of_their_own(self, keys: SubjectKeys) -> None:
        acme = await keys.current(PHONE, BRAND)
        globex = await keys.current(PHONE, "globex")
        other = await keys.current("+14155550124", BRAND)

        assert len({acme.key_id, globex.key_id, other.key_id}) == 3
        assert len({acme.secret, globex.secret, other.secret}) == 3

    async def test_callers_at_once_get_the_same_key(self, keys: SubjectKeys) -> None:
        got = await asyncio.gather(*(keys.current(PHONE, BRAND) for _ in range(8)))

        assert len(set(got)) == 1

    async def test_find_returns_only_the_subjects_own_live_keys(self, keys: SubjectKeys) -> None:
        key = await keys.current(PHONE, BRAND)

        assert await keys.find(PHONE, BRAND, [key.key_id]) == {key.key_id: key.secret}
        assert await keys.find(PHONE, "globex", [key.key_id]) == {}
        assert await keys.find(PHONE, BRAND, ["not-a-key", "0" * 32]) == {}
        assert await keys.find(PHONE, BRAND, []) == {}

    async def test_a_destroyed_key_is_never_found_again(self, keys: SubjectKeys) -> None:
        key = await keys.current(PHONE, BRAND)
        kept = await keys.current(PHONE, "globex")

        assert await keys.destroy(PHONE, BRAND) == 1

        assert await keys.find(PHONE, BRAND, [key.key_id]) == {}
        assert await keys.find(PHONE, "globex", [kept.key_id]) == {kept.key_id: kept.secret}
        assert await keys.destroy(PHONE, BRAND) == 0

    async def test_an_erasure_destroys_only_the_keys_it_listed(self, keys: SubjectKeys) -> None:
        # An erasure lists the keys, records itself, then destroys them: a key made
        # in between, for a fresh opt-in after it, must survive.
        assert await keys.live(PHONE, BRAND) == []
        old = await keys.current(PHONE, BRAND)
        listed = await keys.live(PHONE, BRAND)
        assert listed == [old.key_id]
        assert await keys.destroy(PHONE, BRAND, listed) == 1
        new = await keys.current(PHONE, BRAND)

        assert await keys.destroy(PHONE, BRAND, listed) == 0
        assert await keys.destroy(PHONE, BRAND, []) == 0
        assert await keys.live(PHONE, BRAND) == [new.key_id]
        assert await keys.find(PHONE, BRAND, [old.key_id, new.key_id]) == {new.key_id: new.secret}

    async def test_after_destruction_a_new_key_opens_only_what_follows(
        self, keys: SubjectKeys
    ) -> None:
        old = await keys.current(PHONE, BRAND)
        await keys.destroy(PHONE, BRAND)

        new = await keys.current(PHONE, BRAND)

        assert new.key_id != old.key_id and new.secret != old.secret
        assert await keys.find(PHONE, BRAND, [old.key_id, new.key_id]) == {new.key_id: new.secret}

    async def test_many_subjects_at_once_get_the_keys_they_get_one_by_one(
        self, keys: SubjectKeys
    ) -> None:
        known = await keys.current(PHONE, BRAND)
        subjects = [(PHONE, BRAND), (PHONE, "globex"), ("+14155550124", BRAND), (PHONE, BRAND)]

        got = await keys.current_many(subjects)

        assert set(got) == set(subjects)
        assert got[(PHONE, BRAND)] == known
        assert got[(PHONE, "globex")] == await keys.current(PHONE, "globex")
        assert got[("+14155550124", BRAND)] == await keys.current("+14155550124", BRAND)
        assert len({k.key_id for k in got.values()}) == 3
        assert await keys.current_many([]) == {}

    async def test_callers_of_many_at_once_agree_on_every_key(self, keys: SubjectKeys) -> None:
        subjects = [(f"+1415555{i:04d}", BRAND) for i in range(50)]
        orders = [subjects, subjects[::-1], subjects[25:] + subjects[:25], subjects[::2]]

        got = await asyncio.gather(*(keys.current_many(order) for order in orders))

        for subject in subjects:
            assert len({answer[subject] for answer in got if subject in answer}) == 1

    async def test_many_at_once_make_a_new_key_after_destruction(self, keys: SubjectKeys) -> None:
        old = await keys.current(PHONE, BRAND)
        await keys.destroy(PHONE, BRAND)

        new = (await keys.current_many([(PHONE, BRAND)]))[(PHONE, BRAND)]

        assert new.key_id != old.key_id
        assert await keys.current(PHONE, BRAND) == new
