"""Job: the bench stage. spark-submit jobs/bench.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("bench"))
