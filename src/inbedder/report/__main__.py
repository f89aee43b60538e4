"""`python -m inbedder.report RESULTS_DIR CONFIG...`: re-render a finished run's report."""

from inbedder.report.render import main

raise SystemExit(main())
