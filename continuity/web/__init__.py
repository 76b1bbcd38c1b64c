"""The ``http`` listener: one ``twisted.web`` resource tree.

- :mod:`~continuity.web.root`: the root resource, the site and its request limits;
  later children (admin API, control panel, webmail) are added there
- :mod:`~continuity.web.listeners`: which mail listeners clients may use, from the config
- :mod:`~continuity.web.autoconfig`: Mozilla autoconfig and Outlook Autodiscover (POX)
"""
