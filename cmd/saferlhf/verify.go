package main

func runVerifyReference(args []string) error { return errNotYet("verify-reference") }
