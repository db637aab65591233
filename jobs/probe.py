"""Job: the probe stage. spark-submit jobs/probe.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("probe"))
