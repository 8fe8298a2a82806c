package main

func natlabCommand() *command {
	return &command{name: "natlab", summary: "network-namespace NAT lab for tests and research", run: notBuilt("the NAT lab work")}
}
