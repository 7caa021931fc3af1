"""The consent domain: events, the state they fold into, and the sending policy.

This package is pure: it imports the standard library, ``eventsourcing`` (for its
event classes and upcasting) and ``phonenumbers`` (for E.164 and time zones), and
nothing that does I/O. The caller always passes the time of the question.
"""
