module gotypes

go 1.21
