"""``consent-ledger import FILE``: send another platform's export of opt-ins and
opt-outs to a running service (``ImportConsents``), with a progress bar, and say
what was imported, what was there already and what was refused, and why."""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import itertools
import json
import os
import re
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from services import import_mapping
from services.progress import StopAfter

DESCRIPTION = """\
Import the opt-ins (each with its proof) and the opt-outs of another platform's
export into the ledger, through a running service. Each record is checked as
RecordOptIn or RecordOptOut would check it; a record that fails is refused on
its own, naming the field and why, and the rest go on. Nothing is half-written:
a record is recorded whole or not at all.

Running the same import again writes nothing new: each record carries an import
id (the import_id field, else one derived from the record's content), and a
record already recorded under its id is counted as already present. An id used
before for a different record is refused; within the file, the first record
under an id is the one imported, in a dry run too. A number's facts take effect
in the order of their own times (occurred_at), whatever their order in the file.

Every opt-out of the file is imported before any opt-in: the file is read twice,
its opt-outs (and records whose type cannot be read) first, and its opt-ins only
once the service has acknowledged every one of them, so that an import stopped
midway (killed, cut off, refused) never leaves a number allowed by an opt-in whose
opt-out further down the file is not in yet. So an opt-out and an opt-in under one
import id: the opt-out is imported, the opt-in refused. Standard input or a pipe is
copied to a temporary file first (at most 16 GiB; it is gone when the command ends).
A file that cannot be read past a line, or that changes while its opt-outs are
read, has its opt-outs before that line imported and no opt-in. What is added to a
file while it is imported is not read, and the import exits 1 saying it changed.

file formats (UTF-8 text; from the extension, .csv or .jsonl/.ndjson, or --format;
a compressed file or a workbook is refused, saying how to import it:
gzip -dc export.csv.gz | consent-ledger import --format csv -):
  csv    a header row naming the fields below, one record a row, its values
         separated by commas (a file separated by semicolons or tabs is refused,
         saying how to convert it); a quoted value may run over lines, and one
         whose quote does not close stops the import at its line (the records
         before it are imported). A header row further down (exports joined
         with cat) is refused as a line of its own, and the rows after it are
         read under its columns
  jsonl  one JSON object a line, with the same fields; the proof may be nested
         as "proof": {"name": ..., ...}. An object written over several lines
         (pretty-printed: jq without -c) stops the import at its first line

fields:
  type                opt_in or opt_out (required)
  import_id           the record's id on the other platform (optional, stable)
  phone, brand        the number (E.164, +14155552671; see --phone-region) and the brand
  campaign            opt_in: required; opt_out: empty for every campaign (STOPALL)
  occurred_at         when it happened, ISO 8601 with a zone: 2026-11-02T09:30:00Z
                      (an offset, as +05:30, of -12:00 to +14:00 in whole minutes),
                      or RFC 2822 with its offset, as Twilio writes times:
                      Tue, 05 Mar 2024 14:22:10 +0000; UTC may be named, as Rails
                      writes it: 2024-03-05 14:22:10 UTC. A time with no zone is
                      refused, never guessed (see --time-zone and --time-format)
  opt_in:   tier (conversational, informational, promotional), method (web_form,
            keyword_reply, paper, verbal, api_import), source (first_party),
            proof.registered_at, proof.name, proof.email, proof.postal_address,
            proof.ip_address, proof.collection_detail, proof.form_url,
            proof.consent_text, proof.consent_text_sha256, proof.consent_text_version,
            proof.screenshot_ref, proof.screenshot_sha256, proof.region
  opt_out:  channel (keyword, free_text, web, call, api), text, in_reply_to

The campaigns must be defined first (DefineCampaign); an opt-in must carry the
proof its method and its campaign require. An opt-out of a campaign that is not
defined is kept for review and denies meanwhile, as RecordOptOut does. An opt-out
refused for its details (no channel, a bad time, an import id another record
holds) whose phone and brand can be read is refused and held for review: its
number is denied for the brand until someone resolves it, and the summary says
so. So is a record whose type cannot be read ("optout", none), unless it holds
only an opt-in's fields; opt-ins refused are only refused. An opt-out whose
number cannot be read even so (a local number, "020 7183 8751") is held under no
number: each opt-in of the file whose number ends with its digits is refused."""

EPILOG = """\
connection:
  --address, or CONSENT_ADDRESS, else 127.0.0.1:50051. The token (the write scope,
  for every brand in the file): --token-file, else CONSENT_TOKEN, else
  var/data/dev-token (what `make run` writes). Plaintext unless --cacert is given
  (TLS), with --cert and --key for mutual TLS. --timeout bounds each of the
  import's two calls (its opt-outs', its opt-ins'): one that runs longer stops
  there, saying so (exit 1); run it again with a longer --timeout. A call the
  service refuses for now (RESOURCE_EXHAUSTED with a retry delay: the caller's
  16 import streams open, or its rate limit) is made again with the same records
  after the delay, longer after each refusal in a row, up to 8 refusals or 2
  minutes of waiting; standard error says so once.

output:
  a progress bar on standard error (records acknowledged by the service, their
  rate, the time left), drawn in place on a terminal of a known width, else (a
  log) a plain line at the first answer, then every 5 s, and one at the end, none
  with --quiet; then the summary on standard output:
    imported 9,993 of 10,000 records from export.csv in 1.4 s (7,138 records/s)
      already present: 0
      refused: 7
        3  INVALID_ARGUMENT  phone: ... (lines 4, 18, 230)
        ...
      held for review: 2
      1,204 promotional opt-ins not given in writing (method verbal/api_import): they
      allow informational campaigns only
    ledger written up to: subscribers:0:9993
  refusals alike but for a value (a time quoted, a line named) are counted on one
  line, which shows the first of them and says "the others alike".
  held for review counts the refused opt-outs held all the same (in a dry run:
  that would be), held now or by an earlier run: CanSend denies their numbers
  for the brand until someone resolves them (ListRevocationCandidates).
  promotional opt-ins not given in writing counts the opt-ins of the promotional
  tier imported or present (in a dry run: that would be) with method verbal or
  api_import, shown when there are any: marketing texts need the person's written
  agreement (47 CFR 64.1200(a)(2)), so each allows informational campaigns only
  and CanSend denies a promotional one. No method is assumed: map or --set the one
  the opt-ins were given by (web_form, paper, keyword_reply where in writing).
  --refusals FILE writes every refused record as JSON Lines (line, import_id,
  import_id_derived, code, field, reason, held_for_review) for fixing and
  importing again; import_id_derived true is an id derived from the record, which
  gave none (a run again derives the same); held_for_review true is an opt-out
  held all the same (in a dry run: would be), whose number CanSend denies for the
  brand until someone resolves it. --refusals - writes them to standard output
  (to pipe to jq, say) and the summary to standard error.

mapping an export (another platform's names):
  --column FIELD=HEADER reads a field from the export's column HEADER (in JSON Lines,
  a key; a nested one as outer.inner; spaces around it and capitals aside, unless
  two columns differ only so); --value FIELD:THEIRS=OURS reads the value
  THEIRS of that field (spaces around it and capitals aside) as OURS; --set
  FIELD=VALUE gives every record a field the export has no column for; --ignore
  HEADER leaves a column of the export unread (one neither read nor ignored is
  refused, as a misspelt column is). --column FIELD@opt_out=HEADER (or @opt_in)
  reads FIELD of that type's records from HEADER instead, for an export that keeps
  its opt-outs' times apart: --column occurred_at="Opted In At" --column
  occurred_at@opt_out="Opted Out At" (an opt-out whose "Opted Out At" is empty is
  refused and held, never imported at its opt-in's time; in --mapping,
  "occurred_at@opt_out" under columns). --set FIELD@opt_in=VALUE (or @opt_out) gives
  only that type's records the field: --set campaign@opt_in=promo leaves the
  opt-outs of every campaign, as a platform's "unsubscribed" most often is (with
  --set campaign=promo they end promo alone). Each may be repeated; --mapping FILE says the
  same in a file, kept beside the export so that the migration can be run again
  alike (JSON, or TOML for a .toml name; options beside it add to it, and one saying
  what the file says too is a usage error, neither winning):
    {"columns": {"phone": "Phone Number"},
     "values": {"type": {"subscribed": "opt_in"}},
     "set": {"brand": "acme"}, "ignore": ["Tags"]}
  A mapped column the file does not have (in no JSON line), a column under our own
  name that is mapped or set as well (unless --ignore'd), a field given twice, or a
  value set or mapped to that its field cannot hold (--set tier=promo), --set
  import_id, or a --value of an empty value (type:=opt_out) is a usage error (exit
  2), before anything is sent. A value the mapping
  does not name, of a column whose values it maps, refuses its record; one whose
  type is so unread is held for review as a record of no type is (see above), the
  mapped columns of one type's fields, which every row carries, not counting as an
  opt-in's. The summary, --dry-run and --refusals name fields as the export does
  (its column, or "--set brand"). A record's import id derived from its content is
  the one it has under our own names: switching to a mapping imports nothing again.
  For example, an export of

    Phone Number,Status,Changed At,Opted In At,Full Name,IP Address,Signup Form,...
    +14155552671,subscribed,2026-10-02T17:04:00Z,2026-10-02T17:04:00Z,Ada L...,...
    +14155552671,unsubscribed,2026-11-30T08:00:00Z,2026-10-02T17:04:00Z,Ada L...,...

  is imported with
    consent-ledger import subscribers.csv \\
      --column phone="Phone Number" --column type=Status \\
      --column occurred_at="Changed At" --column proof.registered_at="Opted In At" \\
      --column proof.name="Full Name" --column proof.ip_address="IP Address" \\
      --column proof.form_url="Signup Form" --column proof.consent_text="Consent Text" \\
      --column proof.screenshot_ref=Screenshot \\
      --column proof.screenshot_sha256="Screenshot SHA-256" \\
      --value type:subscribed=opt_in --value type:unsubscribed=opt_out \\
      --set brand=acme --set campaign@opt_in=promo --set tier=promotional \\
      --set method=web_form --set channel=keyword
  A field of one type only, as tier or proof.consent_text (opt-ins) or channel
  (opt-outs), set or read from a column, is given to records of that type only: an
  export's opt-out rows carry the proof columns of the opt-in they ended.
  An export of one row per subscriber, with no status column and an opt-out time
  left empty while the subscriber still is one, is read with --subscriber-rows (in
  --mapping, "subscriber_rows": true) and the two time columns:
    --subscriber-rows --column occurred_at@opt_in="Opted In At" \\
      --column occurred_at@opt_out="Opted Out At"
  Each row is an opt-in at its opt-in time, with its proof, and, when its opt-out
  time is not empty (a cell of spaces is), an opt-out at that time; a row with no
  opt-in time is its opt-out alone. An opt-out time that cannot be read is refused
  and held, as any opt-out's. A row whose opt-out is not after its opt-in is read as
  opted out: its opt-out is imported and its opt-in refused (so that no time wrong
  in the export allows the number), and so is the same opt-in on any other row of
  the subscriber, before that row or after it. Each record's import id is derived from it, the
  one a hand-rewritten file of two records a row would give, so an id column is
  refused (--ignore it), as are a type (--column type, --set type, a column named
  type), --column occurred_at and the two times read from one column: exit 2. Time
  columns of one type given with no type at all are refused too, naming
  --subscriber-rows. The summary counts records, and the rows they came from:
    imported 7 of 8 records from 5 rows of subscribers.csv in 0.2 s (...)
  An export that writes its numbers without their country code (SimpleTexting's
  "(415) 200-5000", Attentive's "14152002000") is read with --phone-region US (in
  --mapping, "phone_region": "US"): a number with no leading + is read as one of
  that region, and must be a valid one of it, else its record is refused saying
  the region it was read in; a number with a + is read as ever. Without it such a
  number is refused (never read in a region guessed), the refusal naming
  --phone-region. A region phone numbers are not known for is a usage error.
  An export that writes its times with no zone or offset (Klaviyo's and Mailchimp's
  "2024-01-02 09:00:00") is read with --time-zone America/New_York (in --mapping,
  "time_zone": "America/New_York"; an IANA name, else a usage error): such a time
  is read as one of that zone, wherever a record has one (occurred_at, either
  time of --subscriber-rows, proof.registered_at); a time with an offset or a zone
  is read as ever. One the zone's clocks skipped, or of the hour they repeat, is
  refused naming its field, never guessed (an opt-out's held); so is a date with no
  time of day. Without it such a time is refused.
  An export that writes its times otherwise is read with --time-format (in
  --mapping, "time_format"): epoch-s or epoch-ms, a count of seconds or
  milliseconds since 1970 in UTC (Attentive's 1706041141103), digits only, in JSON
  Lines a string or a whole number (with --time-zone a usage error: the zone would
  not apply); or a
  strptime format, as '%m/%d/%Y %I:%M %p' for SimpleTexting's 01/02/2024 4:00 AM,
  which must give a date and a time of day, and needs --time-zone unless it gives
  an offset (%z), and then refuses it: else a usage error. Every time of the export must then be so
  written, an ISO 8601 one too, else its record is refused naming its field (an
  opt-out's held); so is a count that, read in the unit given, is of 1970 or past
  the year 9999 (as a count in the other unit would be): it is never read in the
  other; and so is a time whose weekday (%a, %A, %u, %w) is not its date's.
    consent-ledger import klaviyo.csv --time-format '%m/%d/%Y %H:%M:%S' \\
      --time-zone America/New_York
  Rows that are neither an opt-in nor an opt-out (Klaviyo's consent
  NEVER_SUBSCRIBED, Attentive's event CLICK), each refused and held otherwise, are
  left out with --skip COLUMN=VALUE (repeatable; the export's column, its value
  read as --value reads one; in --mapping, "skip": {"Consent": ["NEVER_SUBSCRIBED"]}):
  never sent, counted in the summary (a dry run's alike) as skipped, by
  COLUMN=VALUE, and no refusal for the exit status. A row that reads as an opt-out
  (by its type, --set type=opt_out, a subscriber row's opt-out time, or a type's
  value no --value maps that says one, unsubscribed) is never skipped: it is
  imported (or refused and held) as any opt-out, and the summary counts it as
  "matched --skip but opt-outs". A skip of a value that says an opt-out in plain words
  (unsubscribed, opted out, STOP), or a --value mapping one to opt_in, is a usage
  error, whether its value is mapped or not. A column the file lacks (in no JSON
  line) is a usage error; one no field is read from needs no --ignore.

examples:
  consent-ledger import export.csv --dry-run
  consent-ledger import export.csv
  consent-ledger import stops.jsonl --refusals refused.jsonl
  gunzip -c export.csv.gz | consent-ledger import - --format csv

exit status:
  0  every record imported, already present or skipped (--skip)
  1  some records refused (the summary says which and why), or the service refused
     the import or could not be reached, or the file could not be read past a
     line or changed while it was read, or the --refusals file could not be
     written whole (a disk full: the import goes on without it); records
     acknowledged so far are recorded, and running the import again picks up
     where it stopped
  2  a usage error (no such file, an unknown format or column), or a file that
     holds no records (empty, a header only, blank lines): nothing was imported
  130  interrupted (Ctrl-C, or SIGTERM); the summary says what was imported until
       then, if the import had begun"""

CHUNK = 500
"""Records in one message at most (about 100 KB of opt-ins with short proof)."""
CHUNK_BYTES = 384 * 1024
"""Bytes of records in one message at most: the server reads messages of up to
512 KiB, and opt-ins with long proof (up to 8,192 characters of consent text each)
pass that well before ``CHUNK`` of them. The reader keeps every record far smaller
(``import_files.VALUE_LIMIT``)."""
WINDOW = 8
"""Messages sent ahead of their answers: each is answered once appended, and more
than the service's four in flight keep it busy while answers travel back."""
SHOWN_LINES = 5
"""Line numbers listed per reason in the summary."""
REMEMBERED = 1_000_000
"""Records whose import id (with a hash of the record) and line the command keeps, to
settle a repeat in the file's order itself: some 200 bytes each, as many as the
service remembers (``services.usecases.imports.REMEMBERED``). Past
them the service settles a repeat (the earlier message's record is kept), so that a
file of any size is read in bounded memory: of a record past them only its message's
lines are kept, until the message is answered."""
SPOOL_LIMIT = 16 << 30
"""Bytes of standard input or a pipe copied to a temporary file to be read twice
(opt-outs first) at most: a bound on the disk an import takes unasked. A larger
export is to be saved to a file and named."""


def add_parser(sub: Any, command: Any) -> None:
    """``import`` on ``services.cli.main``'s parser."""
    from services.cli import client

    parser = command("import", "import another platform's opt-ins and opt-outs (CSV, JSON Lines)")
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.add_argument(
        "file",
        metavar="FILE",
        help="the export: .csv or .jsonl, or - for standard input (./- names a file '-')",
    )
    parser.add_argument(
        "--format", choices=["csv", "jsonl"], help="the file's format (default: its extension)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every record against the service (fields, campaigns, proof, ids) and "
        "write nothing",
    )
    parser.add_argument(
        "--refusals",
        metavar="FILE",
        help="write each refused record here (JSONL); - for standard output, the summary "
        "then going to standard error (./- names a file '-')",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    mapping = parser.add_argument_group("another platform's names (see 'mapping an export' below)")
    mapping.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=HEADER",
        help='read FIELD from the export\'s column (or JSON key) HEADER: phone="Phone Number"',
    )
    mapping.add_argument(
        "--value",
        action="append",
        default=[],
        metavar="FIELD:THEIRS=OURS",
        help="read the export's value THEIRS of FIELD as OURS: type:subscribed=opt_in",
    )
    mapping.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="give every record FIELD=VALUE, for a field the export has no column for "
        "(FIELD@opt_in=VALUE or @opt_out: that type's records only)",
    )
    mapping.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="HEADER",
        help="leave the export's column HEADER unread (any other column no field is "
        "read from is refused)",
    )
    mapping.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="leave out every row whose column COLUMN holds VALUE (Klaviyo's "
        "Consent=NEVER_SUBSCRIBED): never sent, counted as skipped; a row that reads as an "
        "opt-out is imported all the same, and a VALUE that says one (unsubscribed) is refused",
    )
    mapping.add_argument(
        "--subscriber-rows",
        action="store_true",
        help="each row is one subscriber: an opt-in at its occurred_at@opt_in column and, "
        "when its occurred_at@opt_out column is not empty, an opt-out at that time (see "
        "'mapping an export' below)",
    )
    mapping.add_argument(
        "--phone-region",
        metavar="CC",
        help="read a number written without its country code (no leading +) as one of "
        "region CC (ISO 3166, as US or GB): (415) 200-5000 as +14152005000",
    )
    mapping.add_argument(
        "--time-zone",
        metavar="ZONE",
        help="read a time written with no zone or offset of its own (2024-01-02 09:00:00) "
        "as one of IANA zone ZONE, as America/New_York",
    )
    mapping.add_argument(
        "--time-format",
        metavar="FORMAT",
        help="read every time as FORMAT writes it: epoch-s or epoch-ms (a count since "
        "1970, UTC), or a strptime format, as '%%m/%%d/%%Y %%I:%%M %%p' (with --time-zone "
        "unless it has %%z); a time not so written is refused",
    )
    mapping.add_argument(
        "--mapping",
        type=Path,
        metavar="FILE",
        help="the same as a file (.json or .toml) of columns, values, set, ignore, skip, "
        "subscriber_rows, phone_region, time_zone and time_format",
    )
    client.add_connection_options(parser, 3600)


@dataclass
class _Group:
    """The records refused for one reason: how many, and the first lines of them;
    the first record's words, and whether another's differed in a value."""

    reason: str
    count: int = 0
    lines: list[int] = field(default_factory=list)
    alike: bool = False


# What varies between refusals for one reason: a value quoted ('11/30/2026 08:00'),
# or a number (a line, a length). An export of US dates, each record's its own, was
# summed up one line a record, each kept till the end.
_VALUE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\d[\d,]*")


@dataclass
class Summary:
    """What an import did, record by record, as the summary tells it."""

    imported: int = 0
    present: int = 0
    refused: int = 0
    held: int = 0
    """Of the refused, opt-outs held for review (in a dry run: that would be)."""
    informational: int = 0
    """Of the imported and present, promotional opt-ins not given in writing: each
    allows informational campaigns only (``ImportConsentsResponse.informational_only``)."""
    unattributed: int = 0
    """Of the imported and present, opt-outs naming a campaign not defined: each held
    for review as an opt-out of every campaign of the brand
    (``ImportConsentsResponse.held_unattributed``)."""
    groups: dict[tuple[str, str, str], _Group] = field(default_factory=dict)
    """Per (code, field, reason but for its values), the records refused for it (the
    lines shown only: a file refused whole is not held in memory)."""
    token: str = ""
    in_file: int | None = None
    """The file's records as counted before the import (None for standard input)."""
    rows: int | None = None
    """Under ``--subscriber-rows``, the rows the records were read from."""
    unanswered: int = 0
    """Records sent in messages the service did not answer before the import ended:
    they may be recorded all the same."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Per ``--skip`` (``COLUMN=VALUE``), the records it left out, never sent."""
    not_skipped: dict[str, int] = field(default_factory=dict)
    """Per ``--skip``, the opt-outs it matched, imported as any opt-out: never
    skipped, so that a skip too wide does not leave a number open to texts."""

    def refuse(self, line: int, code: str, field_name: str, reason: str) -> None:
        self.refused += 1
        key = (code, field_name, _VALUE.sub("_", reason))
        group = self.groups.setdefault(key, _Group(reason))
        group.alike |= reason != group.reason
        group.count += 1
        # The file's first lines: opt-outs are answered before the opt-ins above them.
        if len(group.lines) < SHOWN_LINES or line < group.lines[-1]:
            bisect.insort(group.lines, line)
            del group.lines[SHOWN_LINES:]

    def lines(self, source: str, seconds: float, dry_run: bool) -> list[str]:
        # Skipped records are done with as surely as answered ones: never "not sent".
        answered = self.imported + self.present + self.refused + sum(self.skipped.values())
        rate = f" ({answered / seconds:,.0f} records/s)" if seconds > 0 and answered else ""
        # An import that stopped early is measured against the whole file, so that
        # "imported 10 of 10" never stands for a file of a million.
        total = max(answered, self.in_file or 0)
        verb = "would import" if dry_run else "imported"
        if self.rows is not None:  # an opt-in and an opt-out may share a row
            source = f"{_count(self.rows, 'row')} of {source}"
        out = [
            f"{verb} {self.imported:,} of {_count(total, 'record')} from {source}"
            f" in {seconds:.1f} s{rate}",
            f"  already present: {self.present:,}",
            f"  refused: {self.refused:,}",
        ]
        if self.unanswered:
            # A dry run records nothing, answered or not.
            perhaps = (
                "run the dry run again" if dry_run else "perhaps recorded: run the import again"
            )
            out.append(f"  sent, no answer came ({perhaps}): {self.unanswered:,}")
        if total > answered + self.unanswered:
            unsent = total - answered - self.unanswered
            out.append(f"  not sent, the import stopped first: {unsent:,}")
        ranked = sorted(self.groups.items(), key=lambda kv: (-kv[1].count, kv[0]))
        for (code, field_name, _), group in ranked:
            reason = group.reason + (" (the first; the others alike)" if group.alike else "")
            shown = ", ".join(str(n) for n in group.lines)
            extra = group.count - len(group.lines)
            more = f" and {extra:,} more" if extra else ""
            word = "line" if group.count == 1 else "lines"
            out.append(
                f"    {group.count:>6,}  {code}  {field_name}: {reason} ({word} {shown}{more})"
            )
        for title, counts in (
            ("skipped (--skip)", self.skipped),
            ("matched --skip but opt-outs, so not skipped", self.not_skipped),
        ):
            if counts:
                out.append(f"  {title}: {sum(counts.values()):,}")
                for rule, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                    out.append(f"    {count:>6,}  {rule}")
        # Refused but not lost: these numbers are denied until someone reviews them.
        out.append(f"  held for review: {self.held:,}")
        if self.unattributed:
            # Imported, and waiting for a reviewer all the same: not a silent "imported".
            out.append(
                f"  {self.unattributed:,} opt-outs of campaigns not defined: imported and held "
                "for review, denying every campaign of the brand until resolved"
            )
        if self.informational:
            # Imported all the same, and no promotional send they were meant for allowed:
            # said here, not found out from the first campaign denied.
            out.append(
                f"  {self.informational:,} promotional opt-ins not given in writing (method "
                "verbal/api_import): they allow informational campaigns only"
            )
        if dry_run:
            out.append("dry run: nothing was written")
        elif self.token:
            out.append(f"ledger written up to: {self.token}")
        return out


def _count(n: int, noun: str) -> str:
    """``n`` of ``noun``, as the summary says it: "1 row", "6 rows"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


class _Refusals:
    """The ``--refusals`` file, or nothing. A write that fails (a disk full) ends
    the writing, not the import: the records' fate does not hang on the report of
    them, and ``error`` says it is incomplete (the command exits 1)."""

    def __init__(self, out: TextIO | None, owned: bool = True) -> None:
        self.out = out
        self.owned = owned  # not standard output, which is flushed only
        self.error: OSError | None = None

    def write(
        self,
        line: int,
        import_id: str,
        code: str,
        field_name: str,
        reason: str,
        held: bool = False,
        derived: bool = False,
    ) -> None:
        """One refused record; ``held``: an opt-out held for review all the same (in a
        dry run: that would be), which denies its number, unlike a record refused;
        ``derived``: the record gave no import id, and ``import_id`` is the one derived
        from it, as a run again derives it."""
        if self.out is not None:
            record = {
                "line": line,
                "import_id": import_id,
                "import_id_derived": derived,
                "code": code,
                "field": field_name,
                "reason": reason,
                "held_for_review": held,
            }
            try:
                self.out.write(json.dumps(record) + "\n")
            except OSError as exc:
                self._failed(exc)

    def flush(self) -> None:
        """Written through, so that a failure is met near the records it lost."""
        if self.out is not None:
            try:
                self.out.flush()
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        if self.out is not None:
            try:
                if self.owned:
                    self.out.close()
                else:
                    self.out.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        out, self.out = self.out, None
        self.error = self.error or exc
        if out is not None:
            with contextlib.suppress(OSError):  # what its buffer holds fails again
                out.close()


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # before the import began, or while it is told
        print("consent-ledger import: interrupted", file=sys.stderr)
        return INTERRUPTED


INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""


def _informational_only(kind: str, request: Any) -> bool:
    """Whether a record is a promotional opt-in not given in writing, as the service
    counts it (``ImportConsentsResponse.informational_only``): a repeat the command
    answers itself is counted as its first was, not left out of the summary's line."""
    if kind != "opt_in":
        return False
    from ledger.digest import informational_only
    from services.wire.codec import METHODS, TIERS
    from services.wire.enums import WireFormatError

    try:
        tier = TIERS.from_proto(request.tier, "tier")
        method = METHODS.from_proto(request.method, "method")
    except WireFormatError:  # refused, as its first was: not counted
        return False
    return informational_only(tier, method)


def _run(args: argparse.Namespace) -> int:
    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc
    from tqdm import tqdm

    from services import import_files, import_mapping
    from services.cli import client

    name = "consent-ledger import"
    # "-" is standard input, as for most Unix tools; a file of that name is "./-".
    path = None if args.file == "-" else Path(args.file)
    shown = import_files.STDIN_NAME if path is None else args.file
    spooled: IO[bytes] | None = None
    reader: Iterator[Any] = iter(())
    # With --subscriber-rows: the import id of each opt-in refused as not before its
    # row's opt-out, and that row's line (``import_files.count_read``).
    opted_out: dict[str, int] = {}
    # "-" is standard output, to be piped; the summary goes to standard error then.
    refusals_piped = args.refusals == "-"
    refusals_path = None if args.refusals is None or refusals_piped else Path(args.refusals)
    try:
        if refusals_path is not None and _same_file(refusals_path, path):
            # Opened for writing, it would be emptied under the reader: the export lost,
            # and only what was read before counted as the whole file.
            raise ValueError(f"--refusals {args.refusals} is the file to import; name another")
        fmt = import_files.format_of(path, args.format)
        mapping = import_mapping.from_parts(
            args.column, args.value, args.set, args.mapping, import_files.FIELDS,
            import_files.BELONGS, args.ignore, import_files.unreadable_value,
            args.subscriber_rows, args.phone_region, args.time_zone, args.time_format,
            args.skip,
        )  # fmt: skip
        if path is None or not path.is_file():  # read twice, so kept
            spooled = import_files.spool(path, SPOOL_LIMIT)
        if mapping.names_columns and fmt == "jsonl":
            # JSON Lines has no header: its keys, over the whole file, stand for one,
            # so that a mapping naming a key no line has stops before anything is sent.
            with _opened(path, spooled, shown) as text:
                keys = import_files.json_keys(text)
                mapping = mapping.fitted(keys, f"{shown}'s JSON lines")
        # Counted before it is read: a copy's readers share its offset, so one at a time.
        total = import_files.count_records(path, fmt, spooled)
        rows = None
        if mapping.subscriber_rows and total is not None:
            # A row is one record or two: the records are counted as the reader finds
            # them, so that the summary measures what was imported against them.
            rows = total
            with _opened(path, spooled, shown) as text:
                total = import_files.count_read(text, fmt, mapping, opted_out)
        reader = _opt_outs_first(path, spooled, fmt, shown, mapping)
        # The header is read now: a file of unknown columns is a usage error, not a
        # refusal of every record.
        peeked: list[Any] = []
        stopped: list[import_files.Stopped] = []
        try:
            for item in reader:
                peeked.append(item)
                if item is not OPT_INS:
                    break
        except import_files.Stopped as exc:
            # Broken at its first record (or changed): not a usage error but a file
            # that cannot be read past a line, which exits 1 as it does further down.
            stopped.append(exc)
        if not stopped and peeked[-1:] in ([], [OPT_INS]):
            # Most often an export that failed (a header and no rows): an exit 0 here
            # would pass for "every opt-out recorded".
            _close(reader, spooled)
            print(
                f"{name}: {shown}: holds no records (it is empty, or holds only a "
                "header or blank lines); nothing was imported",
                file=sys.stderr,
            )
            return 2
        records = itertools.chain(peeked, _raising(stopped) if stopped else reader)
        token = client.token(args)
        channel = client.channel(args, client.address(args))
        refusals_out: TextIO | None = sys.stdout if refusals_piped else None
        if refusals_path is not None:
            refusals_out = refusals_path.open("w")
    except (OSError, ValueError) as exc:
        _close(reader, spooled)
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if token is None:
        _close(reader, spooled)
        print(f"{name}: no token: give --token-file or set CONSENT_TOKEN", file=sys.stderr)
        return 2
    summary = Summary(in_file=total, rows=rows)
    refusals = _Refusals(refusals_out, owned=not refusals_piped)
    # Of the first REMEMBERED records sent, by their index in the import:
    lines = array("q")  # the line each starts on
    contents = array("q")  # a hash of its bytes
    first_use: dict[str, int] = {}  # brand and import id: the index of the first record
    # code, field, reason, import id, held for review, the id derived
    refused_at: dict[int, tuple[str, str, str, str, bool, bool]] = {}
    repeat_of, repeat_line = array("q"), array("q")  # a record again: the first's index, line
    repeat_informational = array("b")  # and whether the service counts it informational_only
    # Of opt-outs that could not be read, sent to be held: by index, the field and why.
    told_here: dict[int, tuple[str, str]] = {}
    # Of each message sent and not yet answered: its first record's index, and the
    # line of each of its records (the answers come in the order of the messages).
    in_flight: deque[tuple[int, array[int]]] = deque()
    answered = 0  # records answered
    window = threading.Semaphore(WINDOW)
    stop = threading.Event()
    opt_ins_begun = threading.Event()  # every opt-out acknowledged, the opt-ins go
    failure: list[BaseException] = []
    opt_outs_not_now = 0  # opt-outs the service answered UNAVAILABLE: not imported for now
    # Of the opt-outs sent and not yet answered, by index: the number as written.
    opt_out_numbers: dict[int, str] = {}
    # Of the records sent and not yet answered, by index: those whose import id was
    # derived from them (the file gave none).
    derived_ids: set[int] = set()
    # Of the records sent and not yet answered, by index: those whose number is written
    # without its country code, read with no --phone-region (``_region_hinted``).
    no_country_code: set[int] = set()
    # Of the opt-outs refused whose number could not be read, so held under none: its
    # digits (``_digits_of``), and the line of the first.
    unread_numbers: dict[str, int] = {}
    bar: Any = (
        tqdm(
            total=total,
            unit=" records",
            disable=args.quiet,
            file=sys.stderr,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        if args.quiet or _terminal(sys.stderr)
        else _LogLines(sys.stderr, total)
    )

    sent = 0  # records sent, over both calls
    asked = False  # whether any message was sent
    opt_ins_from: int | None = None  # in a dry run's one call: the first opt-in's index
    messages = [0, 0]  # sent, and answered: the answered ones told to ``answered_all``
    answered_all = threading.Condition()

    def opt_outs_answered() -> bool:
        """Wait until the service has answered every message sent (or the import
        stopped), as the second call waits to; whether it imported all the opt-outs."""
        with answered_all:
            answered_all.wait_for(lambda: messages[1] >= messages[0] or stop.is_set())
        return not stop.is_set() and not opt_outs_not_now

    def requests(opt_ins: bool | None) -> Iterator[Any]:
        """The file's records in messages of ``CHUNK``, at most ``WINDOW`` ahead of
        the answers, up to its opt-ins (``OPT_INS``) or, with ``opt_ins``, the rest;
        None: all of them in one call, the opt-ins in messages of their own sent once
        every opt-out is answered (a dry run: see below). What cannot be read is
        refused here and never sent."""
        nonlocal sent, asked, opt_ins_from
        chunk: list[Any] = []
        chunk_lines = array("q")
        size = 0  # the chunk's bytes
        first = True

        def message() -> Any:
            """The chunk as the next message, once the window has room for it."""
            nonlocal chunk, chunk_lines, size, sent, first, asked
            window.acquire()
            in_flight.append((sent, chunk_lines))
            # Each call's first message says whether it writes.
            request = api.ImportConsentsRequest(records=chunk, dry_run=args.dry_run and first)
            sent += len(chunk)
            messages[0] += 1
            chunk, chunk_lines, size, first, asked = [], array("q"), 0, False, True
            if opt_ins or opt_ins_from is not None:
                opt_ins_begun.set()
            return request

        try:
            for item in records:
                if stop.is_set():
                    return
                if item is OPT_INS:
                    if opt_ins is not None:
                        # This call ends with every opt-out sent; the opt-ins go in a
                        # call of their own once the service has answered all of this one.
                        break
                    # A dry run's opt-ins follow in the same call, as the second call
                    # would: in messages of their own, once every opt-out is answered.
                    if chunk:
                        yield message()
                    if not opt_outs_answered():
                        return
                    opt_ins_from = sent
                    continue
                if isinstance(item, import_files.Skipped):
                    summary.skipped[item.rule] = summary.skipped.get(item.rule, 0) + 1
                    bar.update(1)
                    continue
                if item.unskipped:
                    kept = summary.not_skipped
                    kept[item.unskipped] = kept.get(item.unskipped, 0) + 1
                unreadable = None
                if isinstance(item, import_files.Unreadable):
                    if item.held is None:
                        summary.refuse(item.line, "INVALID_ARGUMENT", item.field, item.reason)
                        refusals.write(
                            item.line, item.shown_id, "INVALID_ARGUMENT", item.field, item.reason,
                            derived=not item.import_id and bool(item.derived_id),
                        )  # fmt: skip
                        bar.update(1)
                        continue
                    # An opt-out: the service is sent what can be read of it, refuses
                    # it and holds its number for review; told here in the file's terms.
                    unreadable = item
                    item = import_files.Read(item.line, item.held, not unreadable.import_id)
                body = item.record.SerializeToString(deterministic=True)
                grows = len(body)
                kind = item.record.WhichOneof("record")
                request = getattr(item.record, kind)
                maybe = None
                if kind == "opt_in" and unreadable is None:
                    maybe = _opted_out_unread(request.phone, unread_numbers)
                if kind == "opt_in" and unreadable is None:
                    refused_row = opted_out.get(request.request_id)
                    if refused_row is not None:
                        # The same opt-in as a row read as opted out, whose opt-out was
                        # imported at a time before it: imported here, it would allow
                        # the number the row refused it for.
                        field_name = mapping.shown("occurred_at", "opt_in")
                        reason = (
                            f"is the opt-in of line {refused_row}, refused there as not "
                            "before its row's opt-out, and so refused here, so that no "
                            "time wrong in the export allows the number; import a later "
                            "opt-in as a record of its own"
                        )
                        summary.refuse(item.line, "INVALID_ARGUMENT", field_name, reason)
                        refusals.write(
                            item.line, request.request_id, "INVALID_ARGUMENT", field_name,
                            reason, derived=item.id_derived,
                        )  # fmt: skip
                        bar.update(1)
                        continue
                if maybe is not None:
                    # Its opt-out cannot be held under any number: imported, this
                    # opt-in might allow a number that opted out.
                    reason = (
                        f"may be the number of the opt-out on line {maybe}, whose number "
                        "cannot be read; not imported until that opt-out is fixed"
                    )
                    field_name = mapping.shown("phone", "opt_in")
                    summary.refuse(item.line, "FAILED_PRECONDITION", field_name, reason)
                    refusals.write(
                        item.line, request.request_id, "FAILED_PRECONDITION", field_name, reason,
                        derived=item.id_derived,
                    )  # fmt: skip
                    bar.update(1)
                    continue
                key = f"{request.brand}\0{request.request_id}"
                same = _content(item.record, kind, body)
                earlier = None if unreadable is not None else first_use.get(key)
                if earlier is not None and kind == "opt_out" and contents[earlier] != same:
                    # Another record's import id on an opt-out: the service refuses it
                    # (the first record keeps the id) and holds its number for review.
                    earlier, key = None, ""
                if earlier is not None:
                    # The order sent decides, in a dry run too: the service works on
                    # several messages at once, and would not see a repeat of a record
                    # it has not written.
                    if contents[earlier] == same:  # fares as the first does
                        repeat_of.append(earlier)
                        repeat_line.append(item.line)
                        repeat_informational.append(_informational_only(kind, request))
                        continue
                    reason = (
                        f"was used before by the record on line {lines[earlier]}; a new "
                        "record needs a new id"
                        if lines[earlier] < item.line
                        else f"was used by the opt-out on line {lines[earlier]}, imported "
                        "first (opt-outs go in before opt-ins); a new record needs a new id"
                    )
                    id_column = mapping.shown("import_id")
                    summary.refuse(item.line, "ALREADY_EXISTS", id_column, reason)
                    refusals.write(
                        item.line, request.request_id, "ALREADY_EXISTS", id_column, reason,
                        derived=item.id_derived,
                    )  # fmt: skip
                    bar.update(1)
                    continue
                if chunk and size + grows > CHUNK_BYTES:
                    yield message()
                index = sent + len(chunk)
                if unreadable is not None:
                    told_here[index] = (unreadable.field, unreadable.reason)
                if kind == "opt_out":
                    opt_out_numbers[index] = request.phone
                if item.id_derived:
                    derived_ids.add(index)
                if not mapping.phone_region and import_files.national(request.phone):
                    no_country_code.add(index)
                if index < REMEMBERED:
                    if key and unreadable is None and _claims(request.request_id):
                        first_use[key] = index
                    lines.append(item.line)
                    contents.append(same)
                chunk.append(item.record)
                chunk_lines.append(item.line)
                size += grows
                if len(chunk) == CHUNK:
                    yield message()
            if chunk or (opt_ins is not False and not asked):  # every record unreadable: still asks
                yield message()  # once, the token too
        except import_files.FormatError as exc:  # the file unreadable from a line on
            failure.append(exc)
            if chunk:  # what was read before it is imported; the call ends there
                yield message()
        except BaseException as exc:  # anything else stops the call
            failure.append(exc)
            raise

    started = time.monotonic()
    call_started = started  # of the call under way
    interrupt = StopAfter()
    code = 0
    answers: Any = None
    offset = 0  # records sent before the call under way
    try:
        with channel:
            # Two calls: the opt-outs, then, once the service has answered every one
            # of them (its records in the ledger), the opt-ins. The service works on
            # several messages of a call at once: an opt-in appended while an opt-out
            # before it failed would allow. An import that ends before the second
            # call leaves only opt-outs recorded. A dry run writes nothing, and a
            # second call would not know the opt-outs of the first (an opt-in stated
            # before an opt-out stamped ahead of the clock is refused, once that
            # opt-out is in): it makes one call, which does, in the same order.
            parts: tuple[bool | None, ...] = (None,) if args.dry_run else (False, True)
            stub = api_grpc.ConsentServiceStub(channel)
            backoff = client.Backoff("import")
            for opt_ins in parts:
                offset = sent  # the service counts a call's records from 0
                # A call refused for now (the caller's most import streams open)
                # is made again with the same messages: the service refuses it
                # before reading any, and records sent twice are found present.
                replay = client.Replay(requests(opt_ins))

                def call(replay: Any = replay) -> Any:
                    nonlocal answers, call_started
                    call_started = time.monotonic()
                    answers = stub.ImportConsents(
                        replay.attempt(),
                        metadata=[("authorization", f"Bearer {token}")],
                        timeout=args.timeout,
                    )
                    return answers

                for answer in backoff.stream(call):
                    replay.answered()
                    window.release()
                    first_index, chunk_lines = in_flight.popleft()
                    summary.imported += answer.imported
                    summary.present += answer.already_present
                    summary.held += answer.held_for_review
                    summary.informational += answer.informational_only
                    summary.unattributed += answer.held_unattributed
                    if answer.consistency_token:
                        summary.token = _merged(summary.token, answer.consistency_token)
                    for refusal in answer.refusals:
                        index = refusal.index + offset
                        line = chunk_lines[index - first_index]
                        told = [
                            _in_file_terms(
                                v.field,
                                v.description,
                                lines,
                                first_index,
                                chunk_lines,
                                offset,
                                mapping,
                                # A dry run's one call: its opt-ins follow its opt-outs.
                                "opt_in"
                                if opt_ins or (opt_ins_from is not None and index >= opt_ins_from)
                                else "opt_out",
                            )
                            for v in refusal.violations
                        ]
                        if index in no_country_code:
                            told = [
                                (shown_as, _region_hinted(reason) if v.field == "phone" else reason)
                                for v, (shown_as, reason) in zip(
                                    refusal.violations, told, strict=True
                                )
                            ]
                        refused_for = refusal.code
                        number = opt_out_numbers.pop(index, None)
                        if number is not None and not refusal.held_for_review:
                            digits = _digits_of(number)
                            if digits and any(v.field == "phone" for v in refusal.violations):
                                unread_numbers.setdefault(digits, line)
                        if refused_for == "UNAVAILABLE" and not (
                            opt_ins or (opt_ins_from is not None and index >= opt_ins_from)
                        ):
                            opt_outs_not_now += 1
                        derived = index in derived_ids
                        here = told_here.pop(index, None)
                        if here is not None:  # what the file said wrong, and the hold
                            told = [_with_hold(here, refusal.held_for_review, args.dry_run)]
                            refused_for = "INVALID_ARGUMENT"
                        for field_name, reason in told[:1]:
                            summary.refuse(line, refused_for, field_name, reason)
                            if index < REMEMBERED:
                                refused_at[index] = (
                                    refused_for, field_name, reason, refusal.request_id,
                                    refusal.held_for_review, derived,
                                )  # fmt: skip
                        for field_name, reason in told:
                            refusals.write(
                                line, refusal.request_id, refused_for, field_name, reason,
                                refusal.held_for_review, derived,
                            )  # fmt: skip
                    told_now = answer.imported + answer.already_present + len(answer.refusals)
                    for answered_index in range(first_index, first_index + told_now):
                        opt_out_numbers.pop(answered_index, None)
                        derived_ids.discard(answered_index)
                        no_country_code.discard(answered_index)
                    answered += told_now
                    with answered_all:
                        messages[1] += 1
                        answered_all.notify_all()
                    bar.update(told_now)
                    interrupt.tick(told_now)  # the test hook: as Ctrl-C, once so many
                    refusals.flush()
                if failure or stop.is_set():
                    break
                if opt_outs_not_now:
                    # An opt-in of one of their numbers would allow it until they are
                    # sent again: the service answers the rest of a call, but cannot
                    # know a call of its own to come.
                    break
        if opt_outs_not_now and args.dry_run:
            bar.close()
            print(
                f"{name}: {opt_outs_not_now:,} opt-outs could not be checked for now "
                "(UNAVAILABLE, listed below), nor the opt-ins after them; run the dry run "
                "again",
                file=sys.stderr,
            )
            code = 1
        elif opt_outs_not_now:
            bar.close()
            print(
                f"{name}: {opt_outs_not_now:,} opt-outs were not imported for now (UNAVAILABLE, "
                f"listed below); run the import again, and what was recorded is skipped",
                file=sys.stderr,
            )
            print(f"{name}: {NO_OPT_IN}", file=sys.stderr)
            code = 1
        if failure:  # the file stopped the import, the service answered all it was sent
            bar.close()
            print(f"{name}: {shown}: {failure[0]}", file=sys.stderr)
            if isinstance(failure[0], import_files.Changed):
                # Counted as it is now, the records added to it count as not sent.
                with contextlib.suppress(OSError):
                    now = import_files.count_records(path, fmt)
                    if rows is not None:  # its rows, then the records the reader finds
                        summary.rows = max(rows, now or 0)
                        with _opened(path, None, shown) as text:
                            now = import_files.count_read(text, fmt, mapping)
                    summary.in_file = max(summary.in_file or 0, now or 0)
            if not opt_ins_begun.is_set() and not args.dry_run:
                print(f"{name}: {NO_OPT_IN}", file=sys.stderr)
            code = 1
    except grpc.RpcError as exc:
        if answered == offset and _read_none(exc):
            # Of this call no record was answered, nor read: none may be recorded.
            sent = offset
        stop.set()
        window.release(WINDOW)  # a sender waiting for room sees the stop
        with answered_all:  # and one waiting for the opt-outs' answers
            answered_all.notify_all()
        bar.close()
        if failure and isinstance(failure[0], Exception):
            # The file, not the service, stopped the import midway (the call ends
            # with a bare "Exception iterating requests"): say what in the file.
            print(f"{name}: {shown}: {failure[0]}", file=sys.stderr)
        else:
            print(f"{name}: {client.refusal(exc)}", file=sys.stderr)
            if _ran_out(time.monotonic() - call_started, args.timeout):
                # Its end reads DEADLINE_EXCEEDED, or the service's answer just before
                # ("a longer deadline"): neither names the option that set it.
                print(
                    f"{name}: the call ran for --timeout ({args.timeout:g} s, each of its "
                    "calls, the opt-outs' and the opt-ins'): give a longer --timeout for "
                    "a file this large",
                    file=sys.stderr,
                )
        if args.dry_run:
            print(
                f"{name}: the dry run stopped after {answered:,} records checked; nothing "
                "was written",
                file=sys.stderr,
            )
        else:
            print(
                f"{name}: stopped after {summary.imported:,} records imported; running the "
                "import again goes on from there (records already recorded are skipped)",
                file=sys.stderr,
            )
            if not opt_ins_begun.is_set():
                print(f"{name}: {NO_OPT_IN}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        # Ctrl-C: end the call (the service stops on the chunks it has not answered)
        # and tell what was done, as for a call that failed.
        stop.set()
        window.release(WINDOW)
        with answered_all:
            answered_all.notify_all()
        if answers is not None:
            answers.cancel()
        bar.close()
        if args.dry_run:
            print(
                f"{name}: the dry run was interrupted after {answered:,} records checked; "
                "nothing was written",
                file=sys.stderr,
            )
        else:
            print(
                f"{name}: interrupted after {summary.imported:,} records imported; running "
                "the import again goes on from there (records already recorded are skipped)",
                file=sys.stderr,
            )
        code = INTERRUPTED
    finally:
        # A record repeated in the file was not sent: it fares as its first did (if
        # that was answered before the import ended).
        for earlier, line, informational in zip(
            repeat_of, repeat_line, repeat_informational, strict=True
        ):
            if earlier in refused_at:
                code_, field_name, reason, import_id, held, derived = refused_at[earlier]
                summary.refuse(line, code_, field_name, reason)
                summary.held += held
                refusals.write(line, import_id, code_, field_name, reason, held, derived)
            elif earlier < answered:
                summary.present += 1
                summary.informational += informational
            bar.update(1)
        refusals.close()
        _close(reader, spooled)
    bar.close()
    if refusals.error is not None:
        print(
            f"{name}: --refusals {args.refusals} could not be written "
            f"({refusals.error.strerror or refusals.error}): it lacks some of the refused "
            "records (the summary counts them all); run the import again with --refusals "
            "a file that can be written: what was imported is found present",
            file=sys.stderr,
        )
        code = code or 1
    summary.unanswered = sent - answered
    seconds = time.monotonic() - started
    source = import_files.STDIN_NAME if path is None else path.name
    summary_out = sys.stderr if refusals_piped else sys.stdout
    try:
        for out_line in summary.lines(source, seconds, args.dry_run):
            print(out_line, file=summary_out)
        if summary_out is not None:  # None: started with it closed
            summary_out.flush()
    except OSError as exc:  # a reader gone (| head), a disk full: the import stands
        print(f"{name}: could not write the summary: {exc}", file=sys.stderr)
        _drop_stdout()
    if refusals_piped and refusals.error is not None:
        _drop_stdout()
    return code or (1 if summary.refused else 0)


def _drop_stdout() -> None:
    """Standard output sent nowhere from now on, once a write to it failed: what is
    left in its buffer would fail again at exit, which Python reports with a status
    of its own (120)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _ran_out(elapsed: float, timeout: float) -> bool:
    """Whether a call that failed after ``elapsed`` seconds ran into its deadline of
    ``timeout``: the service answers a chunk it cannot finish in time a little before
    it (at most half a second, ``services.grpc_api.deadlines``), and the answer
    takes a moment to come."""
    return elapsed >= timeout - min(1.0, 0.2 * timeout)


def _terminal(out: TextIO) -> bool:
    """Whether ``out`` is a terminal the bar can be drawn on. One that gives no width
    (0 columns: ``ssh -tt`` from a script, some container runtimes' ``-t``) is not:
    the bar, fitted to no width, drew nothing at all there."""
    try:
        return out.isatty() and os.get_terminal_size(out.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # replaced, or closed
        return False


class _LogLines:
    """The progress bar's counts for a log (standard error a pipe or a file): a line
    every ``every`` seconds, and the last count at the end, each a whole line of
    plain text. The bar, drawn in place with carriage returns and block glyphs, left
    a log a single line of them."""

    def __init__(
        self,
        out: TextIO,
        total: int | None,
        *,
        every: float = 5.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.out, self.total, self.every, self.clock = out, total, every, clock
        self.done = 0
        self.started = clock()
        self.shown_at: float | None = None
        self.shown = -1  # the count last written
        self.closed = False  # as a bar: nothing more once closed
        self.lock = threading.Lock()  # counted by the call's thread and the main one

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            now = self.clock()
            if self.closed:
                return
            if self.shown_at is None or now - self.shown_at >= self.every:
                self._show(now)

    def close(self) -> None:
        with self.lock:
            if not self.closed and self.done != self.shown:
                self._show(self.clock())
            self.closed = True

    def _show(self, now: float) -> None:
        from services.progress import clock_text

        seconds = now - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        line = f"consent-ledger import: {self.done:,}"
        if self.total:
            line += f" of {self.total:,} records ({self.done / self.total:.0%})"
        else:
            line += " records"
        line += f", {rate:,.0f} records/s"
        if self.total and rate > 0 and self.done < self.total:
            line += f", {clock_text((self.total - self.done) / rate)} left"
        with contextlib.suppress(OSError, ValueError):  # a log gone is no reason to stop
            self.out.write(line + "\n")
            self.out.flush()
        self.shown_at, self.shown = now, self.done


def _read_none(exc: Any) -> bool:
    """Whether a call that failed so had none of its records read by the service: it
    refused the call as a whole (no such token, no write scope), or was never
    reached."""
    import grpc

    code = exc.code()
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return True
    # gRPC's own words for a channel that never connected.
    return code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "")


OPT_INS = object()
"""Between the two parts ``_opt_outs_first`` reads: the opt-ins come next."""
NO_OPT_IN = (
    "no opt-in was imported: opt-ins go in once every opt-out of the file is in, and "
    "this import ended before"
)


def _opt_outs_first(
    path: Path | None,
    spooled: IO[bytes] | None,
    fmt: str,
    shown: str,
    mapping: import_mapping.Mapping | None = None,
) -> Iterator[Any]:
    """The file's records that may deny (``read_records``' opt-outs), ``OPT_INS``,
    then its opt-ins: the file (or its copy, ``spooled``) is read twice. A file
    that changed between the two readings (an export still being written) ends it
    before the opt-ins: its opt-outs read may not be all of them. What cannot be
    read names its field as the export does (``mapping``)."""
    from services import import_files

    # One without columns may still say how numbers and times are written.
    mapping = import_mapping.Mapping() if mapping is None else mapping

    def in_its_terms(items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            if isinstance(item, import_files.Unreadable) and mapping:
                shown = mapping.shown(item.field, item.kind or None)
                item = dataclasses.replace(item, field=shown)
            yield item

    # A file, not a copy, may grow while it is read (an export still being written):
    # both readings end where it ended as the first began, so that the second reads
    # no opt-in whose opt-out the first did not read.
    read_at = None if spooled is not None else _version_of(path)
    upto = None if read_at is None else read_at[2]
    with _opened(path, spooled, shown, upto) as text:
        yield from in_its_terms(import_files.read_records(text, fmt, False, mapping))
    yield OPT_INS
    with _opened(path, spooled, shown, upto) as text:
        if read_at is not None and _version(text) != read_at:
            raise import_files.Changed(
                "changed while its opt-outs were read (an export still being written?); "
                "run the import again once it is whole"
            )
        yield from in_its_terms(import_files.read_records(text, fmt, True, mapping))
        if read_at is not None and _version(text) != read_at:
            raise import_files.Changed(
                "changed while it was read (an export still being written?): what it "
                "holds past what was read is not imported; run the import again once "
                "it is whole"
            )


def _opened(
    path: Path | None, spooled: IO[bytes] | None, shown: str, upto: int | None = None
) -> TextIO:
    """The file (or its copy, ``spooled``) as text, from its start (up to ``upto``
    bytes of the file)."""
    from services import import_files

    if spooled is not None:
        return import_files.open_spooled(spooled, shown)
    assert path is not None
    return import_files.open_text(path, upto)


def _raising(stopped: list[Any]) -> Iterator[Any]:
    """The error the file stopped with, met where its records would be read on."""
    raise stopped[0]
    yield  # a generator: raises when read, not when made


def _claims(request_id: str) -> bool:
    """Whether a record sent under ``request_id`` claims it for the rest of the file.
    One the service refuses as no id (only spaces, too long, a control or invisible
    character) claims nothing: each record under it is refused for the id itself, as
    ImportConsents and RecordOptIn refuse it, not as a repeat of the first."""
    from ledger.commands import check_request_id
    from ledger.errors import InvalidRequest

    try:
        check_request_id(request_id)
    except InvalidRequest:
        return False
    return True


def _content(record: Any, kind: str, body: bytes) -> int:
    """A hash of what ``record`` (serialized as ``body``) says, its number read as
    E.164: the service takes "+1 (415) 555-2671" and "+14155552671" under one import
    id for one record (``ledger.commands.request_fingerprint``), so two lines that
    differ only so are one record here too, not another under its id."""
    from services import import_files

    request = getattr(record, kind)
    e164 = import_files.e164_or_as_given(request.phone)
    if e164 == request.phone:
        return hash(body)
    copy = type(record)()
    copy.CopyFrom(record)
    getattr(copy, kind).phone = e164
    return hash(copy.SerializeToString(deterministic=True))


UNREAD_DIGITS = 7
"""Digits, at least, of an opt-out's number that cannot be read for it to stand in
for the numbers they end: a local number's seven, or more."""


def _digits_of(number: str) -> str | None:
    """The digits of an opt-out's number that cannot be read as one (a local number,
    another country's national form, "020 7183 8751"), less the leading zeros of a
    trunk or international prefix; None when fewer than ``UNREAD_DIGITS``."""
    digits = re.sub(r"\D", "", number).lstrip("0")
    return digits if len(digits) >= UNREAD_DIGITS else None


def _opted_out_unread(number: str, unread: dict[str, int]) -> int | None:
    """The line of an opt-out in ``unread`` (by ``_digits_of``) whose digits
    ``number``'s end with, or None: a look-up per ending, however many there are."""
    if not unread:
        return None
    from services import import_files

    digits = re.sub(r"\D", "", import_files.e164_or_as_given(number))
    for length in range(UNREAD_DIGITS, len(digits) + 1):
        line = unread.get(digits[-length:])
        if line is not None:
            return line
    return None


def _version(text: TextIO) -> tuple[int, ...]:
    """What tells a file changed: its identity, size and time of change."""
    return _version_stat(os.fstat(text.fileno()))


def _version_of(path: Path | None) -> tuple[int, ...]:
    """``_version`` of the file at ``path`` before it is opened."""
    assert path is not None
    return _version_stat(os.stat(path))


def _version_stat(found: os.stat_result) -> tuple[int, ...]:
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def _close(records: Iterator[Any], spooled: IO[bytes] | None) -> None:
    """Close the file being read (a generator's ``close``) and its copy."""
    close = getattr(records, "close", None)
    if close is not None:
        # Still running in the call's thread (a call that failed, its sender told to
        # stop): it closes its file as it returns.
        with contextlib.suppress(ValueError):
            close()
    if spooled is not None:
        spooled.close()


def _same_file(refusals: Path, path: Path | None) -> bool:
    """Whether ``refusals`` is the file to import (``path``, or standard input when
    None, as ``< export.csv`` makes it)."""
    if not refusals.exists():
        return False
    if path is not None:
        return refusals.samefile(path)
    try:
        return os.path.samestat(os.stat(refusals), os.fstat(sys.stdin.fileno()))
    except (OSError, ValueError):  # no standard input at all
        return False


_HOLD_SAID = re.compile(r"(?=; (?:would be )?held for review)|$")
"""Where a refusal's reason says its hold, if it does, else its end."""


def _region_hinted(reason: str) -> str:
    """The service's refusal of a number written without its country code, read
    with no ``--phone-region``, saying that the option reads such a number (before
    what it says of the hold): the service's words alone told no one how to import
    it. A region is never guessed."""
    hint = (
        "; a number without its country code (no leading +) is read only in the region "
        "--phone-region names, as --phone-region US"
    )
    return _HOLD_SAID.sub(hint, reason, count=1)


def _with_hold(here: tuple[str, str], held: bool, dry_run: bool) -> tuple[str, str]:
    """An unreadable opt-out's field and reason, with whether the service held its
    number (the service's own reasons are for what was sent of it)."""
    from ledger.commands import HELD_FOR_REVIEW

    field_name, reason = here
    if not held:
        return field_name, reason
    return field_name, f"{reason}; {'would be ' if dry_run else ''}{HELD_FOR_REVIEW}"


_EARLIER_RECORD = re.compile(r"record (\d+) of this import")


def _in_file_terms(
    field_name: str,
    reason: str,
    lines: array[int],
    first: int,
    chunk_lines: array[int],
    offset: int = 0,
    mapping: import_mapping.Mapping | None = None,
    kind: str | None = None,
) -> tuple[str, str]:
    """A refusal as the file says it: the service's ``request_id`` is the file's
    ``import_id``, and a record of the import it names (an import id the file
    repeats past the ``REMEMBERED`` records, which the service settles) is the line
    it starts on: ``lines`` holds those of the first records, ``chunk_lines`` those of
    the message whose first record is ``first``; the service counts the records of
    the call from ``offset`` on from 0."""

    def line_of(found: re.Match[str]) -> str:
        index = int(found.group(1)) + offset
        if index < len(lines):
            return f"the record on line {lines[index]}"
        if first <= index < first + len(chunk_lines):
            return f"the record on line {chunk_lines[index - first]}"
        return found.group()

    from services import import_files

    ours = "import_id" if field_name == "request_id" else field_name
    shown = mapping.shown(ours, kind) if mapping is not None else ours
    return shown, _EARLIER_RECORD.sub(line_of, import_files.in_file_terms(ours, reason))


def _merged(a: str, b: str) -> str:
    """Two consistency tokens as one covering both."""
    from ledger.ports import ConsistencyToken

    if not a:
        return b
    return ConsistencyToken.decode(a).merge(ConsistencyToken.decode(b)).encode()
