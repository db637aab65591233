"""Job: the synthesize stage. spark-submit jobs/synthesize.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("synthesize"))
