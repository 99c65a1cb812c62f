from .teacher_student import TeacherStudentRCNN

__all__ = ["TeacherStudentRCNN"]
