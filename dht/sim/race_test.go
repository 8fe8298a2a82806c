//go:build race

package sim

// raceEnabled scales the heavier CI scenarios down under the race
// detector: the simulator is single-threaded, so the detector finds
// nothing there and only multiplies the run time.
const raceEnabled = true
