"""Job: the check stage. spark-submit jobs/check.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("check"))
