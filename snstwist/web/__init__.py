"""
C{sns-web}: the web face of an snstwist cluster.

A twisted.web application that is one more client of the cluster, through
L{snstwist.client.client} (so it gets the same master1/master2 failover): the
timeline in a browser, live over Server-Sent Events, and a live dashboard of
the cluster for operators.

    app.py        the site: resources, forms, safety headers
    people.py     browser sessions, CSRF tokens, one cluster client per person
    live.py       Server-Sent Event streams, bounded
    dashboard.py  the cluster as the router sees it, polled, with a history
    pages.py      the HTML pages (twisted.web.template: every text escaped)
    templates/    the pages' XHTML; static/ the style sheet and scripts

Nothing here blocks the reactor, and no page carries inline script: the
Content-Security-Policy allows scripts and styles from this site only.
"""
