package tasks_test

import (
	"fmt"
	"strings"

	"github.com/courier-dev/courier/pkg/tasks"
	"github.com/courier-dev/courier/pkg/webex"
)

func ExampleMessage_Parts() {
	m := tasks.Message{
		Message: webex.Message{RoomID: "room-1", Markdown: "Weekly charts"},
		Uploads: []webex.File{{Name: "a.png", Data: []byte("A")}, {Name: "b.png", Data: []byte("B")}},
	}
	for i, p := range m.Parts() {
		fmt.Printf("message %d: file %s, markdown %q\n", i+1, p.File.Name, p.Markdown)
	}
	// Output:
	// message 1: file a.png, markdown "Weekly charts"
	// message 2: file b.png, markdown ""
}

func ExampleMessage_Validate() {
	m := tasks.Message{Message: webex.Message{RoomID: "room-1", Markdown: strings.Repeat("x", 8000)}}
	fmt.Println(m.Validate(0))
	// Output:
	// markdown: is 8000 bytes, the limit is 7439
}
