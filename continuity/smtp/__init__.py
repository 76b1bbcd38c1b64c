"""SMTP for continuity: the hardened ESMTP server protocol and its replies.

``server.py`` parses and sequences SMTP (RFC 5321) with its extensions and
calls an injected policy (:class:`continuity.smtp.server.ISMTPPolicy`); it
knows nothing of storage, routing or ports. ``codes.py`` holds every reply the
server sends and the exceptions a policy raises to refuse something.
``pipeline.py`` turns octets into commands one at a time, ``arguments.py``
splits MAIL and RCPT arguments, ``data.py`` reads the DATA section byte by
byte (end of data only at ``<CRLF>.<CRLF>``), ``auth.py`` is AUTH PLAIN and
LOGIN. ``client.py`` and its helpers are the relay client.
"""
