"""The consent domain: events, the state they fold into, and the sending policy.

This package is pure: it imports the standard library and small libraries that do
no I/O (``phonenumbers`` for E.164 and time zones, ``holidays``, ``rapidfuzz``).
The caller always passes the time of the question.
"""
